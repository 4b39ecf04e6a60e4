/* sysrate: what one system call costs in pyvmm's minimal Linux (initramfs /bin/sysrate).
 *
 *   sysrate [N]   make N getppid() system calls (default 20000) and print the rate:
 *                 "sysrate: N getppid calls in T us: R per second, U ns each"
 *
 * getppid is the cheapest call there is (no argument, no lock, never cached by glibc), so the figure is
 * the round trip itself: on a kvm_pvm host the #PF at entry_SYSCALL_64 that linux/patches/0003 turns
 * into a system call, the call, and the exception's IRET back.  The clock is CLOCK_MONOTONIC read
 * through the vDSO where the kernel offers it.  Built with gcc -static by linux/build.sh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? strtol(argv[1], NULL, 10) : 20000;
	long ppid = 0;
	double t0, t1;

	if (n <= 0) {
		fprintf(stderr, "sysrate: error: N must be a positive count of calls, not '%s'\n", argv[1]);
		return 2;
	}
	t0 = now_us();
	for (long i = 0; i < n; i++)
		ppid += syscall(SYS_getppid);
	t1 = now_us();
	if (ppid != n * getppid()) {
		fprintf(stderr, "sysrate: error: getppid gave different answers during the run\n");
		return 1;
	}
	printf("sysrate: %ld getppid calls in %.0f us: %.0f per second, %.0f ns each\n",
	       n, t1 - t0, n / ((t1 - t0) / 1e6), (t1 - t0) * 1e3 / n);
	return 0;
}
