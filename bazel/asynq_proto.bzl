# SPDX-License-Identifier: MIT
"""Protocol buffers for asynq: protoc-c and protoc-gen-asynq as genrules.

protoc_c_library(name, srcs, deps) compiles .proto files with protoc-c into
a cc_library `name` holding <base>.pb-c.c/.h.

asynq_proto_library(name, srcs, deps) does the same and also runs the asynq
protoc plugin (//framework/codegen:protoc-gen-asynq), which writes
<base>.asynq.c/.h: per service, the descriptor table of asynq/rpc_desc.h,
typed client stubs (<svc>__<m>__call, <svc>__<m>__reply) and a typed
handler table served with <svc>__asynq_serve. The
cc_library `name` holds both.

Conventions and limits:
- srcs are .proto source files of the calling package; a file is imported by
  its path in its repository ("tests/codegen/x.proto"): protoc runs with the
  calling repository's root, asynq's root (for proto/asynq/options.proto,
  also when asynq is an external repository of the user's workspace) and
  /usr/include (for google/protobuf/descriptor.proto) on its path.
- The macros name their own targets with Label(), so they resolve in asynq's
  repository whichever workspace loads them.
- deps are other protoc_c_library or asynq_proto_library targets; each also
  defines `<dep>_protos`, the .proto files importers need, so the genrules
  declare every file protoc reads.
- Well-known types other than descriptor.proto have no C library here yet.
"""

_PROTOC = "/usr/bin/protoc"
_PROTOC_C = "/usr/bin/protoc-c"
_PLUGIN = str(Label("//framework/codegen:protoc-gen-asynq"))
_OPTIONS = str(Label("//proto/asynq:options_c"))
_PROTOBUF_C = str(Label("//bazel/third_party:protobuf_c"))
_ASYNQ = str(Label("//framework:asynq"))

# asynq's root in the execroot: "" in its own workspace, "external/asynq"
# (or whatever the user named it) in another.
_ASYNQ_ROOT = Label("//framework:asynq").workspace_root

def _here_root():
    """The calling package's repository root in the execroot."""
    name = native.repository_name()
    return "" if name == "@" else "external/" + name[1:]

def _proto_path():
    """protoc's -I flags: the calling repository, asynq, the system."""
    here = _here_root()
    paths = [here or "."]
    if (_ASYNQ_ROOT or ".") not in paths:
        paths.append(_ASYNQ_ROOT or ".")
    paths.append("/usr/include")
    return " ".join(["-I" + p for p in paths])

def _out_dir():
    """Where protoc writes, so its files land on the genrule's outs."""
    here = _here_root()
    return "$(GENDIR)" + ("/" + here if here else "")

def _protos_label(dep):
    """The `<dep>_protos` filegroup of a library label."""
    if ":" not in dep:
        dep = dep + ":" + dep.split("/")[-1]
    return dep + "_protos"

def _base(src):
    if not src.endswith(".proto") or ":" in src:
        fail("%s: srcs must be .proto files of this package" % src)
    return src[:-len(".proto")]

def _protos(name, srcs, deps, visibility, testonly):
    native.filegroup(
        name = name + "_protos",
        srcs = srcs + [_protos_label(d) for d in deps],
        visibility = visibility,
        testonly = testonly,
    )

def _srcs_args(srcs):
    return " ".join(["$(location %s)" % s for s in srcs])

def _protoc_c(name, srcs, protos, deps, visibility, testonly):
    bases = [_base(s) for s in srcs]
    native.genrule(
        name = name + "_gen",
        srcs = srcs + [protos],
        outs = [b + ".pb-c.c" for b in bases] + [b + ".pb-c.h" for b in bases],
        cmd = "%s %s --c_out=%s %s" % (
            _PROTOC_C,
            _proto_path(),
            _out_dir(),
            _srcs_args(srcs),
        ),
        message = "protoc-c %s" % name,
        visibility = ["//visibility:private"],
        testonly = testonly,
    )
    native.cc_library(
        name = name,
        srcs = [b + ".pb-c.c" for b in bases],
        hdrs = [b + ".pb-c.h" for b in bases],
        deps = deps + [_PROTOBUF_C],
        visibility = visibility,
        testonly = testonly,
    )

def protoc_c_library(name, srcs, deps = [], visibility = None, testonly = None):
    """cc_library `name` of the protoc-c output for srcs."""
    _protos(name, srcs, deps, visibility, testonly)
    _protoc_c(name, srcs, ":" + name + "_protos", deps, visibility, testonly)

def asynq_proto_library(name, srcs, deps = [], visibility = None, testonly = None, library = True):
    """cc_library `name` of the protoc-c and protoc-gen-asynq output for srcs.

    Every file may import "proto/asynq/options.proto"; the library always
    depends on it, so its generated headers can include options.pb-c.h.

    library = False is for the framework's own services (proto/asynq/
    health.proto): no cc_library `name` is made, since it would depend on
    //framework:asynq, which must contain the service. The generated
    <base>.asynq.c/.h and the messages' library `name`_pb_c are then
    visible as `visibility`, for //framework/rpc to compile and link.
    """
    pb_deps = list(deps)
    if _OPTIONS not in pb_deps:
        pb_deps.append(_OPTIONS)
    _protos(name, srcs, pb_deps, visibility, testonly)
    protos = ":" + name + "_protos"
    inner = ["//visibility:private"] if library else visibility
    _protoc_c(name + "_pb_c", srcs, protos, pb_deps, inner, testonly)

    bases = [_base(s) for s in srcs]
    native.genrule(
        name = name + "_asynq_gen",
        srcs = srcs + [protos],
        outs = [b + ".asynq.c" for b in bases] + [b + ".asynq.h" for b in bases],
        tools = [_PLUGIN],
        cmd = ("%s --plugin=protoc-gen-asynq=$(location %s) %s " +
               "--asynq_out=%s %s") % (
            _PROTOC,
            _PLUGIN,
            _proto_path(),
            _out_dir(),
            _srcs_args(srcs),
        ),
        message = "protoc-gen-asynq %s" % name,
        visibility = inner,
        testonly = testonly,
    )
    if not library:
        return
    native.cc_library(
        name = name,
        srcs = [b + ".asynq.c" for b in bases],
        hdrs = [b + ".asynq.h" for b in bases],
        deps = [
            ":" + name + "_pb_c",
            _ASYNQ,
        ],
        visibility = visibility,
        testonly = testonly,
    )
