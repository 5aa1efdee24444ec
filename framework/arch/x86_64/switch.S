/* SPDX-License-Identifier: MIT */
/*
 * Context switch for x86-64 (System V). asynqi_ctx_switch(from, to) saves the
 * callee-saved registers and the SSE/x87 control words in a frame on the
 * current stack, stores the stack pointer in from->sp, loads to->sp and
 * restores the frame found there. Everything else is caller-saved, so the C
 * compiler already keeps it around the call.
 */
#include "frame.h"

	.text

/* void asynqi_ctx_switch(asynqi_ctx *from, const asynqi_ctx *to) */
	.globl	asynqi_ctx_switch
	.hidden	asynqi_ctx_switch
	.type	asynqi_ctx_switch, @function
	.p2align 4
asynqi_ctx_switch:
	.cfi_startproc
	subq	$(ASYNQI_FRAME_RET), %rsp
	.cfi_adjust_cfa_offset ASYNQI_FRAME_RET
	movq	%r15, ASYNQI_FRAME_R15(%rsp)
	movq	%r14, ASYNQI_FRAME_R14(%rsp)
	movq	%r13, ASYNQI_FRAME_R13(%rsp)
	movq	%r12, ASYNQI_FRAME_R12(%rsp)
	movq	%rbx, ASYNQI_FRAME_RBX(%rsp)
	movq	%rbp, ASYNQI_FRAME_RBP(%rsp)
	stmxcsr	ASYNQI_FRAME_MXCSR(%rsp)
	fnstcw	ASYNQI_FRAME_FPUCW(%rsp)
	movq	%rsp, (%rdi)

	movq	(%rsi), %rsp
	ldmxcsr	ASYNQI_FRAME_MXCSR(%rsp)
	fldcw	ASYNQI_FRAME_FPUCW(%rsp)
	movq	ASYNQI_FRAME_R15(%rsp), %r15
	movq	ASYNQI_FRAME_R14(%rsp), %r14
	movq	ASYNQI_FRAME_R13(%rsp), %r13
	movq	ASYNQI_FRAME_R12(%rsp), %r12
	movq	ASYNQI_FRAME_RBX(%rsp), %rbx
	movq	ASYNQI_FRAME_RBP(%rsp), %rbp
	addq	$(ASYNQI_FRAME_RET), %rsp
	.cfi_adjust_cfa_offset -ASYNQI_FRAME_RET
	ret
	.cfi_endproc
	.size	asynqi_ctx_switch, .-asynqi_ctx_switch

/* First code a new coroutine runs: asynqi_ctx_switch "returns" here with the
 * argument in r12 and the entry function in r13. The entry never returns. */
	.globl	asynqi_ctx_trampoline
	.hidden	asynqi_ctx_trampoline
	.type	asynqi_ctx_trampoline, @function
	.p2align 4
asynqi_ctx_trampoline:
	.cfi_startproc
	.cfi_undefined rip
	movq	%r12, %rdi
	callq	*%r13
	ud2
	.cfi_endproc
	.size	asynqi_ctx_trampoline, .-asynqi_ctx_trampoline

	.section .note.GNU-stack,"",@progbits
