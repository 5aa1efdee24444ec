// SPDX-License-Identifier: MIT
/*
 * The gRPC C++ peer's lookup server: asynq.bench.peer.Lookup (peer.proto)
 * on 127.0.0.1, answering Get and GetMany with the same work per id as the
 * asynq benchmark's server (id * 3). tests/bench/rpc.c starts it, pinned to
 * the server's CPU, and talks to it over its standard input and output:
 *
 *   lookup_server [PORT]      PORT 0 (the default) takes any free port
 *   stdout: "port N"          once it serves
 *   stdin "cpu" -> stdout "cpu US"   user + system CPU time of the whole
 *                                    process so far, in microseconds
 *   end of stdin              stops it; it exits 0
 *
 * Design notes:
 * - Every RPC is handled on the main thread, the only one that polls the
 *   one completion queue (gRPC's asynchronous API). gRPC's own threads
 *   count as the server's CPU as well: getrusage covers the process.
 * - Each method keeps kSlots calls posted to receive requests. A slot that
 *   received one answers it, and once the answer is sent it is reset and
 *   posted again: no allocation of ours per RPC.
 * - The stdin thread only reads the clock and, at the end of stdin, shuts
 *   the server and the queue down; after that the main thread posts
 *   nothing more and drains the queue.
 */

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <sys/resource.h>

#include <grpcpp/grpcpp.h>

#include "tests/bench/peers/grpc/peer.grpc.pb.h"

namespace
{

using asynq::bench::peer::Key;
using asynq::bench::peer::Keys;
using Service = asynq::bench::peer::Lookup::AsyncService;

// Calls posted per method: more than the benchmark ever keeps outstanding.
constexpr int kSlots = 16;

std::atomic<bool> stopping{ false };

// Anything the completion queue hands back: a slot's last operation ended.
class Tag
{
      public:
	virtual ~Tag() = default;
	virtual void done(bool ok) = 0;
};

void
answer_get(const Key &req, Key *reply)
{
	reply->set_id(req.id() * 3);
}

void
answer_get_many(const Keys &req, Keys *reply)
{
	auto *ids = reply->mutable_ids();
	ids->Reserve(req.ids_size());
	for (int64_t id : req.ids())
		ids->AddAlreadyReserved(id * 3);
}

// One posted call of one method: waits for a request, answers it, starts
// over.
template <class Req, class Reply> class Slot final : public Tag
{
      public:
	using Writer = grpc::ServerAsyncResponseWriter<Reply>;
	using Post = void (Service::*)(grpc::ServerContext *, Req *, Writer *,
	    grpc::CompletionQueue *, grpc::ServerCompletionQueue *, void *);
	using Answer = void (*)(const Req &, Reply *);

	Slot(Service *svc, grpc::ServerCompletionQueue *cq, Post post,
	    Answer answer)
	    : svc_(svc), cq_(cq), post_(post), answer_(answer)
	{
		rearm();
	}

	void done(bool ok) override
	{
		if (stopping.load()) // the queue is shutting down
			return;
		if (!sending_ && ok) {
			answer_(req_, &reply_);
			sending_ = true;
			writer_->Finish(reply_, grpc::Status::OK, this);
			return;
		}
		// The answer went out (or the client left): take the next one.
		rearm();
	}

      private:
	void rearm()
	{
		sending_ = false;
		writer_.reset(); // it refers to ctx_
		ctx_.reset();
		req_.Clear();
		reply_.Clear();
		ctx_.emplace();
		writer_.emplace(&*ctx_);
		(svc_->*post_)(&*ctx_, &req_, &*writer_, cq_, cq_, this);
	}

	Service *svc_;
	grpc::ServerCompletionQueue *cq_;
	Post post_;
	Answer answer_;
	std::optional<grpc::ServerContext> ctx_;
	std::optional<Writer> writer_;
	Req req_;
	Reply reply_;
	bool sending_ = false;
};

double
cpu_us()
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
	    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

// Answers "cpu" lines until the end of stdin, then stops the server.
void
control(grpc::Server *server, grpc::ServerCompletionQueue *cq)
{
	char line[64];
	while (fgets(line, sizeof(line), stdin) != nullptr) {
		if (strncmp(line, "cpu", 3) == 0)
			printf("cpu %.0f\n", cpu_us());
		else
			printf("error unknown command\n");
		fflush(stdout);
	}
	stopping.store(true);
	server->Shutdown(
	    std::chrono::system_clock::now() + std::chrono::seconds(1));
	cq->Shutdown();
}

} // namespace

int
main(int argc, char **argv)
{
	std::string addr = "127.0.0.1:" + std::string(argc > 1 ? argv[1] : "0");
	Service svc;
	grpc::ServerBuilder builder;
	int port = 0;
	// A port another server holds is an error, not a shared port.
	builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
	builder.AddListeningPort(addr, grpc::InsecureServerCredentials(),
	    &port);
	builder.RegisterService(&svc);
	std::unique_ptr<grpc::ServerCompletionQueue> cq =
	    builder.AddCompletionQueue();
	std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
	if (server == nullptr || port == 0) {
		fprintf(stderr, "lookup_server: cannot listen on %s\n",
		    addr.c_str());
		return 1;
	}

	std::vector<std::unique_ptr<Tag>> slots;
	for (int i = 0; i < kSlots; i++) {
		slots.emplace_back(new Slot<Key, Key>(&svc, cq.get(),
		    &Service::RequestGet, answer_get));
		slots.emplace_back(new Slot<Keys, Keys>(&svc, cq.get(),
		    &Service::RequestGetMany, answer_get_many));
	}
	printf("port %d\n", port);
	fflush(stdout);

	std::thread ctl(control, server.get(), cq.get());
	void *tag;
	bool ok;
	while (cq->Next(&tag, &ok))
		static_cast<Tag *>(tag)->done(ok);
	ctl.join();
	server.reset();
	return 0;
}
