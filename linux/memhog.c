/* memhog: the memory-pressure program of pyvmm's minimal Linux (initramfs /bin/memhog).
 *
 * Reads one command per line on stdin (or takes them as arguments) and answers each on stdout:
 *   a N   map N MiB of anonymous memory and write every 4 KiB page (prints progress every 16 MiB)
 *   f     unmap everything allocated so far
 *   s     print how much is held
 *   v     read every page back and count those that lost what 'a' wrote (a page reading zero is
 *         memory the guest kernel or the host gave away under a live mapping)
 *   q     exit
 * Every page is written with a non-zero byte, so the host really has to back it.  Built with
 * gcc -static; the tests drive it through the shell on ttyS0 (tests/e2e/test_linux_shell.py).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MIB (1024UL * 1024UL)
#define MAX_CHUNKS 4096

static struct { char *p; unsigned long mib; } chunks[MAX_CHUNKS];
static int nchunks;
static unsigned long held;

static int run(const char *line)
{
	unsigned long n;

	while (*line == ' ')
		line++;
	switch (line[0]) {
	case 'a':
		n = strtoul(line + 1, NULL, 10);
		if (n == 0 || nchunks == MAX_CHUNKS) {
			printf("memhog: error: 'a N' needs N > 0 MiB (and at most %d allocations)\n", MAX_CHUNKS);
			break;
		}
		for (unsigned long done = 0; done < n;) {
			unsigned long step = n - done < 16 ? n - done : 16;
			char *p = mmap(NULL, step * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (p == MAP_FAILED || nchunks == MAX_CHUNKS) {
				printf("memhog: error: mmap of %lu MiB failed after %lu MiB\n", step, done);
				fflush(stdout);
				return 0;
			}
			for (unsigned long off = 0; off < step * MIB; off += 4096)
				p[off] = (char)(1 + (off >> 12));
			chunks[nchunks].p = p;
			chunks[nchunks++].mib = step;
			done += step;
			held += step;
			printf("memhog: touched %lu/%lu MiB\n", done, n);
			fflush(stdout);
		}
		printf("memhog: holding %lu MiB\n", held);
		break;
	case 'f':
		for (int i = 0; i < nchunks; i++)
			munmap(chunks[i].p, chunks[i].mib * MIB);
		printf("memhog: freed %lu MiB\n", held);
		nchunks = 0;
		held = 0;
		break;
	case 's':
		printf("memhog: holding %lu MiB\n", held);
		break;
	case 'v': {
		unsigned long wrong = 0, zero = 0;

		for (int i = 0; i < nchunks; i++)
			for (unsigned long off = 0; off < chunks[i].mib * MIB; off += 4096)
				if (chunks[i].p[off] != (char)(1 + (off >> 12))) {
					wrong++;
					zero += chunks[i].p[off] == 0;
				}
		printf("memhog: verified %lu MiB: %lu pages wrong, %lu of them zero\n", held, wrong, zero);
		break;
	}
	case 'q':
		printf("memhog: bye\n");
		fflush(stdout);
		return 1;
	case '\0':
	case '\n':
		break;
	default:
		printf("memhog: error: unknown command '%c' (a N, f, s, v, q)\n", line[0]);
	}
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	char line[128];

	if (argc > 1) {
		for (int i = 1; i < argc; i++) {
			char cmd[128];

			if (argv[i][0] == 'a' && argv[i][1] == '\0' && i + 1 < argc)
				snprintf(cmd, sizeof(cmd), "a %s", argv[++i]);
			else
				snprintf(cmd, sizeof(cmd), "%s", argv[i]);
			if (run(cmd))
				break;
		}
		return 0;
	}
	printf("memhog: ready\n");
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin))
		if (run(line))
			break;
	return 0;
}
