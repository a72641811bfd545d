#include "support/postgres_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <random>
#include <thread>

#include <pqxx/pqxx>

#include "core/error.hpp"
#include "support/process.hpp"

namespace linarch::testkit {

namespace {

// The newest /usr/lib/postgresql/<version>/bin holding initdb and postgres; empty when none does.
std::filesystem::path find_bin_dir() {
    std::filesystem::path found;
    int found_version = -1;
    std::error_code ignored;
    for (const auto& entry : std::filesystem::directory_iterator("/usr/lib/postgresql", ignored)) {
        const std::filesystem::path bin = entry.path() / "bin";
        const int version = std::atoi(entry.path().filename().c_str());
        if (version > found_version && std::filesystem::exists(bin / "initdb") &&
            std::filesystem::exists(bin / "postgres")) {
            found = bin;
            found_version = version;
        }
    }
    return found;
}

// Whom initdb and the server run as: the postgres user when we are root, else ourselves.
struct Account {
    bool switch_user = false;
    uid_t uid = 0;
    gid_t gid = 0;
};

// Starts argv as `account` with stdout and stderr going to `log`. With die_with_parent the kernel
// sends the child SIGQUIT (PostgreSQL's immediate shutdown) should this process die first.
pid_t spawn(const std::vector<std::string>& argv, const std::filesystem::path& log, const Account& account,
            bool die_with_parent) {
    // Everything the child needs is built before fork: only async-signal-safe calls after it.
    std::vector<char*> args;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    const std::string log_path = log.string();
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    LINARCH_CHECK(pid >= 0, "cannot fork to run {}", argv[0]);
    if (pid != 0) return pid;
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) ::_exit(126);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::close(fd);
    if (account.switch_user &&
        (::setgroups(1, &account.gid) != 0 || ::setgid(account.gid) != 0 || ::setuid(account.uid) != 0))
        ::_exit(126);
    // After setuid: changing credentials clears the parent-death signal.
    if (die_with_parent && (::prctl(PR_SET_PDEATHSIG, SIGQUIT) != 0 || ::getppid() != parent)) ::_exit(126);
    ::execv(args[0], args.data());
    ::_exit(127);
}

int exit_code_of(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status); }

}  // namespace

int free_local_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    LINARCH_CHECK(fd >= 0, "cannot open a socket to find a free port");
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;  // the kernel picks a free one
    socklen_t length = sizeof(address);
    const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                       ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
    ::close(fd);
    LINARCH_CHECK(bound, "cannot bind a socket on 127.0.0.1 to find a free port");
    return ntohs(address.sin_port);
}

PostgresServer* PostgresServer::shared(std::string& why_not) {
    static std::unique_ptr<PostgresServer> server;
    static bool tried = false;
    static std::string skip_reason, start_error;  // kept for every later test of the process
    if (!tried) {
        tried = true;
        const std::filesystem::path bin_dir = find_bin_dir();
        if (bin_dir.empty()) {
            skip_reason = "the PostgreSQL server is not installed (no /usr/lib/postgresql/*/bin/postgres): "
                          "apt-get install postgresql (scripts/setup does)";
        } else if (::geteuid() == 0 && ::getpwnam("postgres") == nullptr) {
            skip_reason = "running as root, and PostgreSQL refuses root: no postgres user to run the server as";
        } else {
            try {
                server.reset(new PostgresServer(bin_dir.string()));
            } catch (const Error& e) {
                start_error = e.what();
            }
        }
    }
    if (!start_error.empty()) throw Error(start_error);
    why_not = skip_reason;
    return server.get();
}

PostgresServer::PostgresServer(const std::string& bin_dir) : owner_pid_(::getpid()) {
    std::random_device entropy;
    dir_ = std::filesystem::temp_directory_path() / fmt::format("linarch-pg-{}-{:08x}", ::getpid(), entropy());
    std::filesystem::create_directories(dir_);
    Account account;
    if (::geteuid() == 0) {
        const passwd* postgres = ::getpwnam("postgres");
        account = {true, postgres->pw_uid, postgres->pw_gid};
        LINARCH_CHECK(::chown(dir_.c_str(), account.uid, account.gid) == 0, "cannot give {} to the postgres user",
                      dir_.string());
    }
    try {
        const std::filesystem::path data = dir_ / "data", log = dir_ / "server.log";
        const pid_t initdb = spawn({bin_dir + "/initdb", "-D", data.string(), "-U", "postgres", "--auth=trust",
                                    "--no-sync", "--no-instructions", "--encoding=UTF8", "--locale=C"},
                                   dir_ / "initdb.log", account, false);
        int status = 0;
        ::waitpid(initdb, &status, 0);
        LINARCH_CHECK(exit_code_of(status) == 0, "initdb of the test PostgreSQL server failed ({}):\n{}",
                      exit_code_of(status), read_text(dir_ / "initdb.log"));

        // -F and the two settings after it: durability is not what these tests check.
        port_ = free_local_port();
        server_pid_ = spawn({bin_dir + "/postgres", "-D", data.string(), "-p", std::to_string(port_), "-k",
                             dir_.string(), "-c", "listen_addresses=127.0.0.1", "-F", "-c", "full_page_writes=off",
                             "-c", "synchronous_commit=off"},
                            log, account, true);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        for (;;) {
            LINARCH_CHECK(::waitpid(server_pid_, &status, WNOHANG) == 0,
                          "the test PostgreSQL server exited while starting ({}):\n{}", exit_code_of(status),
                          read_text(log));
            try {
                pqxx::connection probe(url("postgres"));
                break;
            } catch (const pqxx::broken_connection& e) {
                LINARCH_CHECK(std::chrono::steady_clock::now() < deadline,
                              "the test PostgreSQL server did not accept connections within 60 s: {}\n{}", e.what(),
                              read_text(log));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    } catch (const Error&) {
        if (server_pid_ > 0) {
            ::kill(server_pid_, SIGQUIT);
            ::waitpid(server_pid_, nullptr, 0);
        }
        std::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
        throw;
    }
}

PostgresServer::~PostgresServer() {
    if (::getpid() != owner_pid_) return;
    // SIGINT: fast shutdown (disconnects clients, no checkpoint wait worth speaking of).
    ::kill(server_pid_, SIGINT);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (::waitpid(server_pid_, nullptr, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(server_pid_, SIGKILL);
            ::waitpid(server_pid_, nullptr, 0);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
}

std::string PostgresServer::create_database() {
    const std::string name = fmt::format("test_{}", ++databases_);
    // FILE_COPY copies template1's files, faster than logging them (the default) with fsync off.
    run_sql("postgres", fmt::format("CREATE DATABASE {} STRATEGY = FILE_COPY", name));
    return name;
}

std::string PostgresServer::url(const std::string& database, const std::string& user) const {
    return fmt::format("postgresql://{}@127.0.0.1:{}/{}", user, port_, database);
}

void PostgresServer::run_sql(const std::string& database, const std::string& sql) const {
    try {
        pqxx::connection connection(url(database));
        pqxx::nontransaction(connection).exec(sql);
    } catch (const pqxx::pqxx_exception& e) {
        fail("test PostgreSQL server, database {}: {} failed: {}", database, sql, e.base().what());
    }
}

}  // namespace linarch::testkit
