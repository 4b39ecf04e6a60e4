/* The initramfs /init of pyvmm's minimal Linux guest: spin forever without a single system call.
 *
 * On a kvm_pvm host user space cannot make system calls (SYSCALL lands at LSTAR still in user mode,
 * int $0x80 raises #UD), so this /init only proves that the kernel reached user space and then keeps
 * the CPU politely busy while the balloon driver works in the kernel.  Built with
 * gcc -nostdlib -static: no libc, no start files.
 */
void _start(void)
{
	for (;;)
		__asm__ volatile("pause" ::: "memory");
}
