/* SPDX-License-Identifier: MIT */
/*
 * Context switch for x86-64 (System V). asynqi_ctx_switch(from, to) saves the
 * callee-saved registers and the SSE/x87 control words in a frame on the
 * current stack, stores the stack pointer in from->sp, loads to->sp and
 * restores the frame found there. Everything else is caller-saved, so the C
 * compiler already keeps it around the call. asynqi_stack_call(arg, fn, top)
 * runs fn(arg) on another stack as an ordinary call and comes back when fn
 * returns, however many switches fn made in between.
 *
 * Design notes:
 * - The control words are compared before they are loaded: ldmxcsr and fldcw
 *   stall the pipeline, and two contexts almost always run in the same mode.
 *   Only MXCSR's control bits count (the low six are sticky exception flags,
 *   caller-saved by the ABI).
 * - The switch leaves through `jmp *%rcx` rather than `ret`: the return
 *   stack buffer always predicts the caller of the other context, whereas
 *   the indirect predictor learns the few places tasks resume at.
 * - A function run by asynqi_stack_call starts in the default floating-point
 *   environment, as a coroutine made by asynqi_ctx_make does, and its caller
 *   gets its own back when it returns. Reading MXCSR (stmxcsr) costs ~5 ns
 *   here, more than the rest of a call, and loading it next to nothing, so
 *   the caller reads its state once (asynqi_fpenv_save) for any number of
 *   calls in a row and each call loads it back.
 */
#include "frame.h"

#define MXCSR_CONTROL 0xffc0 /* MXCSR without the exception flags */
#define MXCSR_DEFAULT 0x1f80 /* all exceptions masked, round to nearest */
#define FPUCW_DEFAULT 0x037f /* likewise for x87, extended precision */

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
	movl	ASYNQI_FRAME_MXCSR(%rsp), %eax
	movzwl	ASYNQI_FRAME_FPUCW(%rsp), %edx
	movq	%rsp, (%rdi)

	movq	(%rsi), %rsp
	/* eax: our MXCSR, edx: our x87 control word; load the other
	 * context's only where they differ. */
	xorl	ASYNQI_FRAME_MXCSR(%rsp), %eax
	testl	$MXCSR_CONTROL, %eax
	jnz	1f
2:	cmpw	ASYNQI_FRAME_FPUCW(%rsp), %dx
	jne	3f
4:	movq	ASYNQI_FRAME_R15(%rsp), %r15
	movq	ASYNQI_FRAME_R14(%rsp), %r14
	movq	ASYNQI_FRAME_R13(%rsp), %r13
	movq	ASYNQI_FRAME_R12(%rsp), %r12
	movq	ASYNQI_FRAME_RBX(%rsp), %rbx
	movq	ASYNQI_FRAME_RBP(%rsp), %rbp
	movq	ASYNQI_FRAME_RET(%rsp), %rcx
	addq	$(ASYNQI_FRAME_SIZE), %rsp
	.cfi_adjust_cfa_offset -ASYNQI_FRAME_SIZE
	jmp	*%rcx
	.cfi_adjust_cfa_offset ASYNQI_FRAME_SIZE
1:	ldmxcsr	ASYNQI_FRAME_MXCSR(%rsp)
	jmp	2b
3:	fldcw	ASYNQI_FRAME_FPUCW(%rsp)
	jmp	4b
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

/* void asynqi_fpenv_save(asynqi_fpenv *env) */
	.globl	asynqi_fpenv_save
	.hidden	asynqi_fpenv_save
	.type	asynqi_fpenv_save, @function
	.p2align 4
asynqi_fpenv_save:
	.cfi_startproc
	stmxcsr	ASYNQI_FPENV_MXCSR(%rdi)
	fnstcw	ASYNQI_FPENV_FPUCW(%rdi)
	ret
	.cfi_endproc
	.size	asynqi_fpenv_save, .-asynqi_fpenv_save

/* void asynqi_stack_call(void *arg, void (*fn)(void *), void *top,
 *     const asynqi_fpenv *env)
 * top is 16-byte aligned; env is the caller's state, read beforehand. fn
 * starts in the default state (loaded only if env differs from it); env is
 * loaded back, unconditionally, when fn returns: loads are cheap. */
	.globl	asynqi_stack_call
	.hidden	asynqi_stack_call
	.type	asynqi_stack_call, @function
	.p2align 4
asynqi_stack_call:
	.cfi_startproc
	pushq	%rbp
	.cfi_adjust_cfa_offset 8
	.cfi_offset rbp, -16
	movq	%rsp, %rbp
	.cfi_def_cfa_register rbp
	pushq	%rbx
	.cfi_offset rbx, -24
	pushq	%rcx /* keeps rsp 16-byte aligned; rbx holds env */
	movq	%rcx, %rbx
	movl	ASYNQI_FPENV_MXCSR(%rcx), %eax
	andl	$MXCSR_CONTROL, %eax
	cmpl	$MXCSR_DEFAULT, %eax
	jne	1f
	cmpw	$FPUCW_DEFAULT, ASYNQI_FPENV_FPUCW(%rcx)
	jne	1f
2:	movq	%rdx, %rsp
	callq	*%rsi
	leaq	-16(%rbp), %rsp
	ldmxcsr	ASYNQI_FPENV_MXCSR(%rbx)
	fldcw	ASYNQI_FPENV_FPUCW(%rbx)
	popq	%rcx
	popq	%rbx
	popq	%rbp
	.cfi_def_cfa rsp, 8
	ret
	.cfi_def_cfa rbp, 16
1:	ldmxcsr	fpenv_default+ASYNQI_FPENV_MXCSR(%rip)
	fldcw	fpenv_default+ASYNQI_FPENV_FPUCW(%rip)
	jmp	2b
	.cfi_endproc
	.size	asynqi_stack_call, .-asynqi_stack_call

	.section .rodata
	.p2align 3
fpenv_default:
	.long	MXCSR_DEFAULT
	.short	FPUCW_DEFAULT
	.short	0

	.section .note.GNU-stack,"",@progbits
