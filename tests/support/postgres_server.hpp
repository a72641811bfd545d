// A throwaway PostgreSQL server for tests: initdb into a fresh temp directory, the server on
// 127.0.0.1 at a free port (its socket in that directory too), fsync off; stopped and deleted when
// the test process exits. Run as root (CI), initdb and the server run as the `postgres` user, since
// PostgreSQL refuses to run as root.
#pragma once
#include <sys/types.h>

#include <filesystem>
#include <string>

namespace linarch::testkit {

class PostgresServer {
public:
    // This test process's server, started on first use. Nullptr, with the reason in `why_not`, when
    // the server binaries (/usr/lib/postgresql/*/bin) or, as root, the postgres user are missing; a
    // server that is there but fails to start is an Error quoting its log.
    static PostgresServer* shared(std::string& why_not);

    ~PostgresServer();
    PostgresServer(const PostgresServer&) = delete;
    PostgresServer& operator=(const PostgresServer&) = delete;

    // A new empty database (test_1, test_2, ...); returns its name.
    std::string create_database();
    // postgresql://user@127.0.0.1:port/database (trust authentication: no password).
    std::string url(const std::string& database, const std::string& user = "postgres") const;
    // Runs `sql` as the superuser in `database`.
    void run_sql(const std::string& database, const std::string& sql) const;

private:
    explicit PostgresServer(const std::string& bin_dir);

    std::filesystem::path dir_;  // data directory, socket, logs
    int port_ = 0;
    pid_t server_pid_ = -1;
    pid_t owner_pid_ = -1;  // a forked child that exits normally must not stop its parent's server
    int databases_ = 0;
};

// A TCP port on 127.0.0.1 that nothing listens on (bound and released; free unless taken since).
int free_local_port();

}  // namespace linarch::testkit
