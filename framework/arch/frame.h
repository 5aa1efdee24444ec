/* SPDX-License-Identifier: MIT */
/*
 * The saved-register frame of a suspended coroutine, shared by the assembly
 * context switch (framework/arch/<cpu>/switch.S) and the C code that builds a
 * new coroutine's first frame. A suspended coroutine's stack pointer points at
 * this frame; switching in restores the registers and returns through the
 * saved return address.
 */
#ifndef ASYNQ_ARCH_FRAME_H
#define ASYNQ_ARCH_FRAME_H

#if defined(__x86_64__)

/* System V x86-64: callee-saved rbx, rbp, r12-r15, the MXCSR control bits
 * and the x87 control word. */
#define ASYNQI_FRAME_MXCSR 0
#define ASYNQI_FRAME_FPUCW 4
#define ASYNQI_FRAME_R15 8
#define ASYNQI_FRAME_R14 16
#define ASYNQI_FRAME_R13 24
#define ASYNQI_FRAME_R12 32
#define ASYNQI_FRAME_RBX 40
#define ASYNQI_FRAME_RBP 48
#define ASYNQI_FRAME_RET 56
#define ASYNQI_FRAME_SIZE 64

#ifndef __ASSEMBLER__
#include <stddef.h>
#include <stdint.h>
struct asynqi_frame {
	uint32_t mxcsr;
	uint16_t fpucw;
	uint16_t pad;
	uint64_t r15, r14, r13, r12, rbx, rbp;
	uint64_t ret;
};
_Static_assert(offsetof(struct asynqi_frame, mxcsr) == ASYNQI_FRAME_MXCSR, "");
_Static_assert(offsetof(struct asynqi_frame, fpucw) == ASYNQI_FRAME_FPUCW, "");
_Static_assert(offsetof(struct asynqi_frame, r15) == ASYNQI_FRAME_R15, "");
_Static_assert(offsetof(struct asynqi_frame, r14) == ASYNQI_FRAME_R14, "");
_Static_assert(offsetof(struct asynqi_frame, r13) == ASYNQI_FRAME_R13, "");
_Static_assert(offsetof(struct asynqi_frame, r12) == ASYNQI_FRAME_R12, "");
_Static_assert(offsetof(struct asynqi_frame, rbx) == ASYNQI_FRAME_RBX, "");
_Static_assert(offsetof(struct asynqi_frame, rbp) == ASYNQI_FRAME_RBP, "");
_Static_assert(offsetof(struct asynqi_frame, ret) == ASYNQI_FRAME_RET, "");
_Static_assert(sizeof(struct asynqi_frame) == ASYNQI_FRAME_SIZE, "");
/* The first frame's entry registers: r12 holds the argument, r13 the entry
 * function, read by the trampoline. */
#define ASYNQI_FRAME_ARG(f) ((f)->r12)
#define ASYNQI_FRAME_FN(f) ((f)->r13)
#endif

/* The floating-point control state a call onto another stack restores
 * (asynqi_stack_call): MXCSR and the x87 control word. */
#define ASYNQI_FPENV_MXCSR 0
#define ASYNQI_FPENV_FPUCW 4
#ifndef __ASSEMBLER__
typedef struct asynqi_fpenv {
	uint32_t mxcsr;
	uint16_t fpucw;
	uint16_t pad;
} asynqi_fpenv;
_Static_assert(offsetof(asynqi_fpenv, mxcsr) == ASYNQI_FPENV_MXCSR, "");
_Static_assert(offsetof(asynqi_fpenv, fpucw) == ASYNQI_FPENV_FPUCW, "");
#endif

#elif defined(__aarch64__)

/* AAPCS64: callee-saved x19-x28, frame pointer x29, link register x30,
 * the low halves d8-d15 of v8-v15, and FPCR. */
#define ASYNQI_FRAME_X19 0
#define ASYNQI_FRAME_X21 16
#define ASYNQI_FRAME_X23 32
#define ASYNQI_FRAME_X25 48
#define ASYNQI_FRAME_X27 64
#define ASYNQI_FRAME_X29 80
#define ASYNQI_FRAME_D8 96
#define ASYNQI_FRAME_D10 112
#define ASYNQI_FRAME_D12 128
#define ASYNQI_FRAME_D14 144
#define ASYNQI_FRAME_FPCR 160
#define ASYNQI_FRAME_SIZE 176

#ifndef __ASSEMBLER__
#include <stddef.h>
#include <stdint.h>
struct asynqi_frame {
	uint64_t x[12]; /* x19..x30 */
	uint64_t d[8];  /* d8..d15 */
	uint64_t fpcr;
	uint64_t pad;
};
_Static_assert(offsetof(struct asynqi_frame, x[0]) == ASYNQI_FRAME_X19, "");
_Static_assert(offsetof(struct asynqi_frame, x[2]) == ASYNQI_FRAME_X21, "");
_Static_assert(offsetof(struct asynqi_frame, x[4]) == ASYNQI_FRAME_X23, "");
_Static_assert(offsetof(struct asynqi_frame, x[6]) == ASYNQI_FRAME_X25, "");
_Static_assert(offsetof(struct asynqi_frame, x[8]) == ASYNQI_FRAME_X27, "");
_Static_assert(offsetof(struct asynqi_frame, x[10]) == ASYNQI_FRAME_X29, "");
_Static_assert(offsetof(struct asynqi_frame, d[0]) == ASYNQI_FRAME_D8, "");
_Static_assert(offsetof(struct asynqi_frame, d[2]) == ASYNQI_FRAME_D10, "");
_Static_assert(offsetof(struct asynqi_frame, d[4]) == ASYNQI_FRAME_D12, "");
_Static_assert(offsetof(struct asynqi_frame, d[6]) == ASYNQI_FRAME_D14, "");
_Static_assert(offsetof(struct asynqi_frame, fpcr) == ASYNQI_FRAME_FPCR, "");
_Static_assert(sizeof(struct asynqi_frame) == ASYNQI_FRAME_SIZE, "");
/* The first frame's entry registers: x19 holds the argument, x20 the entry
 * function, read by the trampoline; x30 is the trampoline itself. */
#define ASYNQI_FRAME_ARG(f) ((f)->x[0])
#define ASYNQI_FRAME_FN(f) ((f)->x[1])
#endif

/* The floating-point control state a call onto another stack restores
 * (asynqi_stack_call): FPCR. */
#define ASYNQI_FPENV_FPCR 0
#ifndef __ASSEMBLER__
typedef struct asynqi_fpenv {
	uint64_t fpcr;
} asynqi_fpenv;
_Static_assert(offsetof(asynqi_fpenv, fpcr) == ASYNQI_FPENV_FPCR, "");
#endif

#endif

#endif /* ASYNQ_ARCH_FRAME_H */
