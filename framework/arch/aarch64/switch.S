/* SPDX-License-Identifier: MIT */
/*
 * Context switch for aarch64 (AAPCS64). asynqi_ctx_switch(from, to) saves the
 * callee-saved general registers x19-x30, d8-d15 and FPCR in a frame on the
 * current stack, stores sp in from->sp, loads to->sp and restores the frame
 * found there, returning through the restored x30. FPCR is written only when
 * the other context's differs: msr fpcr is a slow, serialising write, and two
 * contexts almost always run in the same mode. asynqi_stack_call(arg, fn,
 * top) runs fn(arg) on another stack as an ordinary call and comes back when
 * fn returns, however many switches fn made in between, starting fn in the
 * default floating-point environment and giving the caller its own back.
 */
#include "frame.h"

	.text

/* void asynqi_ctx_switch(asynqi_ctx *from, const asynqi_ctx *to) */
	.globl	asynqi_ctx_switch
	.hidden	asynqi_ctx_switch
	.type	asynqi_ctx_switch, %function
	.p2align 4
asynqi_ctx_switch:
	.cfi_startproc
	sub	sp, sp, #ASYNQI_FRAME_SIZE
	.cfi_adjust_cfa_offset ASYNQI_FRAME_SIZE
	stp	x19, x20, [sp, #ASYNQI_FRAME_X19]
	stp	x21, x22, [sp, #ASYNQI_FRAME_X21]
	stp	x23, x24, [sp, #ASYNQI_FRAME_X23]
	stp	x25, x26, [sp, #ASYNQI_FRAME_X25]
	stp	x27, x28, [sp, #ASYNQI_FRAME_X27]
	stp	x29, x30, [sp, #ASYNQI_FRAME_X29]
	stp	d8, d9, [sp, #ASYNQI_FRAME_D8]
	stp	d10, d11, [sp, #ASYNQI_FRAME_D10]
	stp	d12, d13, [sp, #ASYNQI_FRAME_D12]
	stp	d14, d15, [sp, #ASYNQI_FRAME_D14]
	mrs	x9, fpcr
	str	x9, [sp, #ASYNQI_FRAME_FPCR]
	mov	x11, sp
	str	x11, [x0]

	ldr	x11, [x1]
	mov	sp, x11
	ldp	x19, x20, [sp, #ASYNQI_FRAME_X19]
	ldp	x21, x22, [sp, #ASYNQI_FRAME_X21]
	ldp	x23, x24, [sp, #ASYNQI_FRAME_X23]
	ldp	x25, x26, [sp, #ASYNQI_FRAME_X25]
	ldp	x27, x28, [sp, #ASYNQI_FRAME_X27]
	ldp	x29, x30, [sp, #ASYNQI_FRAME_X29]
	ldp	d8, d9, [sp, #ASYNQI_FRAME_D8]
	ldp	d10, d11, [sp, #ASYNQI_FRAME_D10]
	ldp	d12, d13, [sp, #ASYNQI_FRAME_D12]
	ldp	d14, d15, [sp, #ASYNQI_FRAME_D14]
	ldr	x10, [sp, #ASYNQI_FRAME_FPCR]
	cmp	x9, x10 /* x9 still holds our FPCR */
	b.eq	1f
	msr	fpcr, x10
1:	add	sp, sp, #ASYNQI_FRAME_SIZE
	.cfi_adjust_cfa_offset -ASYNQI_FRAME_SIZE
	ret
	.cfi_endproc
	.size	asynqi_ctx_switch, .-asynqi_ctx_switch

/* First code a new coroutine runs: the argument is in x19, the entry
 * function in x20. The entry never returns. */
	.globl	asynqi_ctx_trampoline
	.hidden	asynqi_ctx_trampoline
	.type	asynqi_ctx_trampoline, %function
	.p2align 4
asynqi_ctx_trampoline:
	.cfi_startproc
	.cfi_undefined x30
	mov	x0, x19
	blr	x20
	brk	#0
	.cfi_endproc
	.size	asynqi_ctx_trampoline, .-asynqi_ctx_trampoline

/* void asynqi_fpenv_save(asynqi_fpenv *env) */
	.globl	asynqi_fpenv_save
	.hidden	asynqi_fpenv_save
	.type	asynqi_fpenv_save, %function
	.p2align 4
asynqi_fpenv_save:
	.cfi_startproc
	mrs	x9, fpcr
	str	x9, [x0, #ASYNQI_FPENV_FPCR]
	ret
	.cfi_endproc
	.size	asynqi_fpenv_save, .-asynqi_fpenv_save

/* void asynqi_stack_call(void *arg, void (*fn)(void *), void *top,
 *     const asynqi_fpenv *env)
 * top is 16-byte aligned; env is the caller's state, read beforehand. fn
 * starts with FPCR at its reset value (written only if env's differs), and
 * env's FPCR is back when fn returns (written only if fn left another). */
	.globl	asynqi_stack_call
	.hidden	asynqi_stack_call
	.type	asynqi_stack_call, %function
	.p2align 4
asynqi_stack_call:
	.cfi_startproc
	stp	x29, x30, [sp, #-32]!
	.cfi_def_cfa_offset 32
	.cfi_offset x29, -32
	.cfi_offset x30, -24
	str	x19, [sp, #16]
	.cfi_offset x19, -16
	mov	x29, sp
	.cfi_def_cfa_register x29
	mov	x19, x3
	ldr	x9, [x3, #ASYNQI_FPENV_FPCR]
	cbz	x9, 1f
	msr	fpcr, xzr
1:	mov	sp, x2
	blr	x1
	mov	sp, x29
	ldr	x9, [x19, #ASYNQI_FPENV_FPCR]
	mrs	x10, fpcr
	cmp	x9, x10
	b.eq	2f
	msr	fpcr, x9
2:	ldr	x19, [sp, #16]
	ldp	x29, x30, [sp], #32
	.cfi_def_cfa sp, 0
	.cfi_restore x19
	.cfi_restore x29
	.cfi_restore x30
	ret
	.cfi_endproc
	.size	asynqi_stack_call, .-asynqi_stack_call

	.section .note.GNU-stack,"",@progbits
