// A small HTTP client for the server tests (cpp-httplib over loopback): JSON requests, and
// streaming requests whose server-sent events are checked for OpenAI's framing as they are parsed.
#pragma once
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace linarch::testkit {

using json = nlohmann::json;

struct HttpReply {
    int status = -1;  // -1: no answer
    std::string body;
    json parsed() const { return json::parse(body, nullptr, false); }
};

inline httplib::Client client(int port) {
    httplib::Client http("127.0.0.1", port);
    http.set_connection_timeout(10);
    http.set_read_timeout(120);
    http.set_write_timeout(10);
    return http;
}

inline HttpReply http_get(int port, const std::string& path) {
    auto http = client(port);
    const auto result = http.Get(path);
    if (!result) return {};
    return {result->status, result->body};
}

inline HttpReply http_post(int port, const std::string& path, const std::string& body) {
    auto http = client(port);
    const auto result = http.Post(path, body, "application/json");
    if (!result) return {};
    return {result->status, result->body};
}

// A POST of a JSON body to path, for client.send.
inline httplib::Request json_post(const std::string& path, const std::string& body) {
    httplib::Request request;
    request.method = "POST";
    request.path = path;
    request.body = body;
    request.set_header("Content-Type", "application/json");
    return request;
}

// POSTs body and hangs up as soon as the reply's status line and headers arrive (a client that goes away
// while a non-streamed reply is being made); returns the status it saw (-1: none).
inline int http_post_and_hang_up(int port, const std::string& path, const std::string& body) {
    auto http = client(port);
    int status = -1;
    httplib::Request request = json_post(path, body);
    request.response_handler = [&](const httplib::Response& response) {
        status = response.status;
        return false;
    };
    http.send(request);
    return status;
}

struct StreamReply {
    int status = -1;
    std::string raw;            // the whole response body
    std::vector<json> chunks;   // the JSON of each `data:` event before [DONE]
    bool done = false;          // ended with `data: [DONE]`
    double first_chunk_s = -1;  // seconds from sending to the first event
    double first_token_s = -1;  // … to the first event with generated text or a finish reason
    double total_s = -1;        // seconds from sending to the end
};

// POSTs body with stream = true. stop_after > 0 hangs up after that many events (a client that
// goes away mid-stream). Every event must be `data: <JSON object>` or the final `data: [DONE]`.
inline StreamReply http_stream(int port, const std::string& path, const std::string& body, int stop_after = 0) {
    auto http = client(port);
    StreamReply reply;
    const auto sent = std::chrono::steady_clock::now();
    const auto seconds = [&] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
    };
    int events = 0;
    httplib::Request request = json_post(path, body);
    request.response_handler = [&](const httplib::Response& response) {
        reply.status = response.status;
        return true;
    };
    request.content_receiver = [&](const char* data, size_t length, uint64_t, uint64_t) {
        if (reply.first_chunk_s < 0) reply.first_chunk_s = seconds();
        reply.raw.append(data, length);
        for (size_t end; (end = reply.raw.find("\n\n")) != std::string::npos;) {
            // Move complete events from raw to chunks; raw keeps only an unfinished event.
            const std::string event = reply.raw.substr(0, end);
            reply.raw.erase(0, end + 2);
            ++events;
            if (event.rfind("data: ", 0) != 0) {
                ADD_FAILURE() << "an event that is not `data: ...`: " << event;
                continue;
            }
            const std::string data = event.substr(6);
            if (data == "[DONE]") {
                EXPECT_FALSE(reply.done) << "two [DONE]";
                reply.done = true;
                continue;
            }
            EXPECT_FALSE(reply.done) << "an event after [DONE]: " << data;
            const json chunk = json::parse(data, nullptr, false);
            EXPECT_TRUE(chunk.is_object()) << "not a JSON object: " << data;
            reply.chunks.push_back(chunk);
            if (reply.first_token_s < 0 && chunk.contains("choices"))
                for (const json& choice : chunk["choices"]) {
                    const bool text = choice.value("text", std::string()) != "" ||
                                      (choice.contains("delta") && choice["delta"].value("content", std::string()) != "");
                    if (text || !choice.value("finish_reason", json()).is_null()) reply.first_token_s = seconds();
                }
        }
        return stop_after <= 0 || events < stop_after;
    };
    const auto result = http.send(request);
    if (stop_after <= 0 && !result) ADD_FAILURE() << "no answer: " << httplib::to_string(result.error());
    reply.total_s = seconds();
    if (stop_after <= 0) {
        EXPECT_TRUE(reply.raw.empty()) << "unterminated event: " << reply.raw;
    }
    return reply;
}

// The text of a completion or chat stream: its chunks' text / delta.content, concatenated.
inline std::string streamed_text(const std::vector<json>& chunks) {
    std::string text;
    for (const json& chunk : chunks)
        for (const json& choice : chunk["choices"]) {
            if (choice.contains("text")) text += choice["text"].get<std::string>();
            if (choice.contains("delta") && choice["delta"].contains("content"))
                text += choice["delta"]["content"].get<std::string>();
        }
    return text;
}

// The value of an unlabelled metric in Prometheus text (-1 when absent).
inline double metric_value(const std::string& prometheus, const std::string& name) {
    const std::string key = "\n" + name + " ";
    const size_t at = ("\n" + prometheus).find(key);
    if (at == std::string::npos) return -1;
    return std::stod(prometheus.substr(at + key.size() - 1));
}

}  // namespace linarch::testkit
