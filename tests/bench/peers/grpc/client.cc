// SPDX-License-Identifier: MIT
/*
 * The gRPC C++ peer's closed-loop client: one thread, one channel (one
 * HTTP/2 connection), gRPC's asynchronous completion-queue API.
 * tests/bench/rpc.c starts it, pinned to the client's CPU, and gives it one
 * shape at a time on its standard input; the answers come on its standard
 * output, one line each:
 *
 *   lookup_client ADDR        e.g. 127.0.0.1:40123
 *   stdout: "ready VERSION"   connected, and the server answered a Get and
 *                             a GetMany correctly
 *   stdin  "run IDS DEPTH MS" IDS = 0: Get, one id per RPC; IDS = N: GetMany
 *                             with N ids per RPC; DEPTH RPCs kept
 *                             outstanding; new RPCs issued for MS ms
 *   stdout "done RPCS IDS WALL_US CPU_US P50_US P99_US"
 *                             RPCs and ids completed, wall time from the
 *                             first issue to the last completion, this
 *                             process's user + system CPU time over it, and
 *                             the RPCs' latency percentiles
 *   stdout "fail WHY"         an RPC failed or answered wrongly
 *   end of stdin              it exits 0
 *
 * Design notes:
 * - Closed loop: a completed RPC is checked (every id of every reply) and
 *   at once replaced by a new one until the time is up; then the
 *   outstanding ones drain. Latency is per RPC, issue to completion.
 * - A call's reader lives in its ClientContext's call arena, so it is
 *   dropped before the context is replaced.
 */

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include "tests/bench/peers/grpc/peer.grpc.pb.h"

namespace
{

using asynq::bench::peer::Key;
using asynq::bench::peer::Keys;
using asynq::bench::peer::Lookup;

double
now_us()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

double
cpu_us()
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
	    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

// One outstanding RPC.
struct Call {
	std::optional<grpc::ClientContext> ctx;
	std::unique_ptr<grpc::ClientAsyncResponseReader<Key>> get;
	std::unique_ptr<grpc::ClientAsyncResponseReader<Keys>> many;
	Key key, key_reply;
	Keys keys, keys_reply;
	grpc::Status status;
	double sent_us = 0;
};

class Driver
{
      public:
	explicit Driver(Lookup::Stub *stub) : stub_(stub)
	{
	}

	~Driver()
	{
		cq_.Shutdown();
		void *tag;
		bool ok;
		while (cq_.Next(&tag, &ok))
			;
	}

	// Runs one shape; returns false with *why set on a wrong answer.
	bool run(int ids, int depth, double ms, std::string *why)
	{
		std::vector<Call> calls(depth);
		std::vector<double> lat;
		lat.reserve(1 << 16);
		double c0 = cpu_us(), t0 = now_us(), end = t0 + ms * 1e3;
		uint64_t rpcs = 0;
		for (Call &c : calls)
			issue(&c, ids);
		for (int left = depth; left > 0;) {
			void *tag;
			bool ok;
			if (!cq_.Next(&tag, &ok)) {
				*why = "completion queue shut down";
				return false;
			}
			double now = now_us();
			Call *c = static_cast<Call *>(tag);
			if (!ok || !c->status.ok()) {
				*why =
				    "rpc failed: " + c->status.error_message();
				return false;
			}
			if (!check(*c, ids, why))
				return false;
			lat.push_back(now - c->sent_us);
			rpcs++;
			if (now < end)
				issue(c, ids);
			else
				left--;
		}
		double t1 = now_us(), c1 = cpu_us();
		for (Call &c : calls)
			reset(&c);
		printf("done %" PRIu64 " %" PRIu64 " %.0f %.0f %.1f %.1f\n",
		    rpcs, rpcs * (uint64_t)(ids > 0 ? ids : 1), t1 - t0,
		    c1 - c0, percentile(&lat, 0.50), percentile(&lat, 0.99));
		fflush(stdout);
		return true;
	}

      private:
	static void reset(Call *c)
	{
		c->get.reset();
		c->many.reset();
		c->ctx.reset();
	}

	void issue(Call *c, int ids)
	{
		reset(c);
		c->ctx.emplace();
		c->sent_us = now_us();
		if (ids == 0) {
			c->key.set_id(next_++);
			c->get = stub_->AsyncGet(&*c->ctx, c->key, &cq_);
			c->get->Finish(&c->key_reply, &c->status, c);
			return;
		}
		c->keys.clear_ids();
		for (int i = 0; i < ids; i++)
			c->keys.add_ids(next_++);
		c->many = stub_->AsyncGetMany(&*c->ctx, c->keys, &cq_);
		c->many->Finish(&c->keys_reply, &c->status, c);
	}

	static bool check(const Call &c, int ids, std::string *why)
	{
		if (ids == 0) {
			if (c.key_reply.id() == c.key.id() * 3)
				return true;
			*why = "Get(" + std::to_string(c.key.id()) +
			    ") answered " + std::to_string(c.key_reply.id());
			return false;
		}
		if (c.keys_reply.ids_size() != ids) {
			*why = "GetMany of " + std::to_string(ids) +
			    " ids answered " +
			    std::to_string(c.keys_reply.ids_size());
			return false;
		}
		for (int i = 0; i < ids; i++)
			if (c.keys_reply.ids(i) != c.keys.ids(i) * 3) {
				*why = "GetMany: wrong answer for id " +
				    std::to_string(c.keys.ids(i));
				return false;
			}
		return true;
	}

	// The value at rank p of *v (nearest rank); reorders *v.
	static double percentile(std::vector<double> *v, double p)
	{
		if (v->empty())
			return 0;
		size_t k = (size_t)(p * (double)(v->size() - 1) + 0.5);
		std::nth_element(v->begin(), v->begin() + (long)k, v->end());
		return (*v)[k];
	}

	Lookup::Stub *stub_;
	grpc::CompletionQueue cq_;
	int64_t next_ = 1;
};

// A blocking Get and GetMany, so a server that answers wrongly is caught
// before anything is measured.
bool
self_check(Lookup::Stub *stub, std::string *why)
{
	grpc::ClientContext c1, c2;
	Key k, kr;
	k.set_id(14);
	grpc::Status st = stub->Get(&c1, k, &kr);
	if (!st.ok() || kr.id() != 42) {
		*why = "Get(14) did not answer 42: " + st.error_message();
		return false;
	}
	Keys ks, ksr;
	for (int64_t id : { 1, -2, 1000000007 })
		ks.add_ids(id);
	st = stub->GetMany(&c2, ks, &ksr);
	if (!st.ok() || ksr.ids_size() != 3 || ksr.ids(0) != 3 ||
	    ksr.ids(1) != -6 || ksr.ids(2) != 3000000021) {
		*why = "GetMany(1, -2, 1000000007) did not answer 3, -6, "
		       "3000000021: " +
		    st.error_message();
		return false;
	}
	return true;
}

} // namespace

int
main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: lookup_client HOST:PORT\n");
		return 2;
	}
	std::shared_ptr<grpc::Channel> ch =
	    grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials());
	if (!ch->WaitForConnected(
	        std::chrono::system_clock::now() + std::chrono::seconds(10))) {
		printf("fail cannot connect to %s\n", argv[1]);
		return 1;
	}
	std::unique_ptr<Lookup::Stub> stub = Lookup::NewStub(ch);
	std::string why;
	if (!self_check(stub.get(), &why)) {
		printf("fail %s\n", why.c_str());
		return 1;
	}
	printf("ready %s\n", grpc::Version().c_str());
	fflush(stdout);

	Driver d(stub.get());
	char line[128];
	while (fgets(line, sizeof(line), stdin) != nullptr) {
		int ids, depth;
		double ms;
		if (sscanf(line, "run %d %d %lf", &ids, &depth, &ms) != 3 ||
		    ids < 0 || depth < 1 || ms < 0) {
			printf("fail bad command: %s", line);
			fflush(stdout);
			continue;
		}
		if (!d.run(ids, depth, ms, &why)) {
			// RPCs may still be in flight into d's calls: leave at
			// once rather than tear them down.
			printf("fail %s\n", why.c_str());
			fflush(stdout);
			_exit(1);
		}
	}
	return 0;
}
