# The recovery stub of crates/inject/src/recovery.rs (x86-64, AT&T syntax).
# Build: as recovery.s -o r.o && objcopy -O binary -j .text r.o r.bin
# r12: the thread's ucontext (rt_sigreturn's stack pointer); r13: its list
# {count, [kind, a, b]...} (kind 1: close fd a; 2: munmap a, b bytes);
# r14: what the call in flight does (1 new fd, 2 new mapping of r15 bytes,
# 3 closes fd rdi, 4 unmaps rdi, 5 new fd pair written at r10: socketpair);
# rbx/r8/rbp: the fds/mapping not to take twice.
	.text
	.globl _start
_start:
	syscall
recover:
	mov $-1, %rbx
	mov $-1, %rbp
	mov $-1, %r8
	cmp $1, %r14
	jne 1f
	mov %rax, %rbx
	cmp $-4095, %rax
	jae 5f
	mov %rax, %rdi
	mov $3, %eax
	syscall
	jmp 5f
1:	cmp $2, %r14
	jne 2f
	mov %rax, %rbp
	cmp $-4095, %rax
	jae 5f
	mov %rax, %rdi
	mov %r15, %rsi
	mov $11, %eax
	syscall
	jmp 5f
2:	cmp $3, %r14
	jne 3f
	mov %rdi, %rbx
	jmp 5f
3:	cmp $4, %r14
	jne 4f
	mov %rdi, %rbp
	jmp 5f
4:	cmp $5, %r14
	jne 5f
	test %rax, %rax
	jnz 5f
	mov (%r10), %ebx
	mov 4(%r10), %r8d
	mov %rbx, %rdi
	mov $3, %eax
	syscall
	mov %r8, %rdi
	mov $3, %eax
	syscall
5:	mov (%r13), %r9
	lea 8(%r13), %r10
6:	test %r9, %r9
	jz 9f
	mov 8(%r10), %rdi
	cmpq $1, (%r10)
	jne 7f
	cmp %rbx, %rdi
	je 8f
	cmp %r8, %rdi
	je 8f
	mov $3, %eax
	syscall
	jmp 8f
7:	cmpq $2, (%r10)
	jne 8f
	cmp %rbp, %rdi
	je 8f
	mov 16(%r10), %rsi
	mov $11, %eax
	syscall
8:	add $24, %r10
	dec %r9
	jmp 6b
9:	mov %r12, %rsp
	mov $15, %eax
	syscall
	ud2
