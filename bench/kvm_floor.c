/*
 * kvm_floor: the cost of one VM exit round trip seen from a minimal C VMM, the floor pyvmm is measured
 * against.
 *
 * One VM, one vCPU in 32-bit protected mode (flat segments set through KVM_SET_SREGS, paging off) running
 * a two-instruction loop that exits on every iteration: `out %al, $BENCH_PORT` (a port nobody serves) or
 * `mov BENCH_MMIO, %eax` (an address in the MMIO hole with no memory slot). The host does nothing but
 * check the exit and call KVM_RUN again; the time of N round trips, after a warm-up, is divided by N.
 *
 * Usage: kvm_floor [pio|mmio|all] [N]        prints lines "ns_per_exit <pio|mmio> <value>"
 *        kvm_floor smp [N] [THREADS]         one VM with THREADS vCPUs (default 2), a thread each, all running
 *                                            the port-I/O loop at once; prints "exits_per_s pio <threads> <value>"
 *                                            for 1 vCPU and for THREADS vCPUs (total exits/s of the VM)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE    0x10000         /* 64 KiB of guest RAM at gpa 0 */
#define CODE_GPA    0x1000
#define TSS_GPA     0xfffbd000      /* three pages VMX wants for real-mode emulation; unused here */
#define BENCH_PORT  0x0700          /* unused in pyvmm's port map (arch/x86/layout.py) */
#define BENCH_MMIO  0xc0000000u     /* start of the MMIO hole, below the virtio-mmio windows */
#define WARMUP      1000

static void die(const char *what)
{
    fprintf(stderr, "kvm_floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void flat(struct kvm_segment *seg, uint16_t selector, uint8_t type)
{
    memset(seg, 0, sizeof(*seg));
    seg->base = 0;
    seg->limit = 0xffffffff;
    seg->selector = selector;
    seg->type = type;
    seg->present = 1;
    seg->db = 1;
    seg->s = 1;
    seg->g = 1;
}

#define MAX_VCPUS   8

struct vm {
    int kvm, vm, vcpu;
    struct kvm_run *run;
    uint8_t *ram;
    int nvcpus;
    int vcpus[MAX_VCPUS];           /* vcpus[0] == vcpu */
    struct kvm_run *runs[MAX_VCPUS];
};

static void vcpu_create(struct vm *v, int index)
{
    int fd = ioctl(v->vm, KVM_CREATE_VCPU, index);
    if (fd < 0)
        die("KVM_CREATE_VCPU");
    int run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < 0)
        die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");

    /* 32-bit protected mode without a GDT in memory: KVM takes the hidden segment state as given, and the
       loop never loads a segment register.  Every vCPU starts at the loop (no INIT/SIPI: the floor). */
    struct kvm_sregs sregs;
    if (ioctl(fd, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    flat(&sregs.cs, 0x08, 0xb);             /* execute/read, accessed */
    flat(&sregs.ds, 0x10, 0x3);             /* read/write, accessed */
    sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
    sregs.cr0 = 0x11;                       /* PE | ET */
    if (ioctl(fd, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = CODE_GPA, .rflags = 0x2 };
    if (ioctl(fd, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");
    v->vcpus[index] = fd;
    v->runs[index] = run;
}

static void vm_create_n(struct vm *v, const uint8_t *code, size_t code_len, int nvcpus)
{
    v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (v->kvm < 0)
        die("open /dev/kvm");
    v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0);
    if (v->vm < 0)
        die("KVM_CREATE_VM");
    if (ioctl(v->vm, KVM_SET_TSS_ADDR, TSS_GPA) < 0)
        die("KVM_SET_TSS_ADDR");

    v->ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (v->ram == MAP_FAILED)
        die("mmap guest RAM");
    memcpy(v->ram + CODE_GPA, code, code_len);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE, .userspace_addr = (uintptr_t)v->ram,
    };
    if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");

    v->nvcpus = nvcpus;
    for (int i = 0; i < nvcpus; i++)
        vcpu_create(v, i);
    v->vcpu = v->vcpus[0];
    v->run = v->runs[0];
}

static void vm_create(struct vm *v, const uint8_t *code, size_t code_len)
{
    vm_create_n(v, code, code_len, 1);
}

static void vm_destroy(struct vm *v)
{
    for (int i = 0; i < v->nvcpus; i++)
        close(v->vcpus[i]);
    close(v->vm);
    close(v->kvm);
    munmap(v->ram, RAM_SIZE);
}

/* One round trip: enter the guest, get the expected exit back. */
static void run_vcpu_once(int vcpu, struct kvm_run *r, int want_mmio)
{
    if (ioctl(vcpu, KVM_RUN, 0) < 0)
        die("KVM_RUN");
    if (!want_mmio && r->exit_reason == KVM_EXIT_IO && r->io.port == BENCH_PORT)
        return;
    if (want_mmio && r->exit_reason == KVM_EXIT_MMIO && r->mmio.phys_addr == BENCH_MMIO && !r->mmio.is_write)
        return;                              /* the read returns whatever is in mmio.data: zeroes */
    fprintf(stderr, "kvm_floor: unexpected exit reason %u\n", r->exit_reason);
    exit(1);
}

static void run_once(struct vm *v, int want_mmio)
{
    run_vcpu_once(v->vcpu, v->run, want_mmio);
}

/* The port is above 0xff, out of reach of `out %al, $imm8`, so DX holds it. */
static const uint8_t pio_code[] = {
    0x66, 0xba, BENCH_PORT & 0xff, BENCH_PORT >> 8,   /* mov $BENCH_PORT, %dx */
    0xee,                                             /* 1: out %al, (%dx) */
    0xeb, 0xfd,                                       /*    jmp 1b */
};
static const uint8_t mmio_code[] = {
    0xa1, BENCH_MMIO & 0xff, (BENCH_MMIO >> 8) & 0xff, (BENCH_MMIO >> 16) & 0xff, BENCH_MMIO >> 24,
                                                      /* 1: mov BENCH_MMIO, %eax */
    0xeb, 0xf9,                                       /*    jmp 1b */
};

static double bench(const char *mode, long n)
{
    int mmio = strcmp(mode, "mmio") == 0;
    struct vm v;
    if (mmio)
        vm_create(&v, mmio_code, sizeof(mmio_code));
    else
        vm_create(&v, pio_code, sizeof(pio_code));

    for (int i = 0; i < WARMUP; i++)
        run_once(&v, mmio);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++)
        run_once(&v, mmio);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    vm_destroy(&v);
    double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    return ns / n;
}

struct smp_thread {
    pthread_t thread;
    int vcpu;
    struct kvm_run *run;
    long n;
    double seconds;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *smp_worker(void *arg)
{
    struct smp_thread *t = arg;
    for (int i = 0; i < WARMUP; i++)
        run_vcpu_once(t->vcpu, t->run, 0);
    double t0 = now();
    for (long i = 0; i < t->n; i++)
        run_vcpu_once(t->vcpu, t->run, 0);
    t->seconds = now() - t0;
    return NULL;
}

/* Total exits per second of one VM whose `threads` vCPUs all run the port-I/O loop at once. */
static double bench_smp(long n, int threads)
{
    struct vm v;
    struct smp_thread t[MAX_VCPUS];
    vm_create_n(&v, pio_code, sizeof(pio_code), threads);
    for (int i = 0; i < threads; i++) {
        t[i] = (struct smp_thread){ .vcpu = v.vcpus[i], .run = v.runs[i], .n = n };
        if (pthread_create(&t[i].thread, NULL, smp_worker, &t[i]))
            die("pthread_create");
    }
    double total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i].thread, NULL);
        total += n / t[i].seconds;
    }
    vm_destroy(&v);
    return total;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "smp") == 0) {
        long n = argc > 2 ? strtol(argv[2], NULL, 0) : 20000;
        int threads = argc > 3 ? atoi(argv[3]) : 2;
        if (n <= 0 || threads < 1 || threads > MAX_VCPUS) {
            fprintf(stderr, "usage: kvm_floor smp [N>0] [THREADS 1-%d]\n", MAX_VCPUS);
            return 2;
        }
        printf("exits_per_s pio 1 %.0f\n", bench_smp(n, 1));
        printf("exits_per_s pio %d %.0f\n", threads, bench_smp(n, threads));
        return 0;
    }

    const char *mode = argc > 1 ? argv[1] : "all";
    long n = argc > 2 ? strtol(argv[2], NULL, 0) : 20000;
    if (n <= 0 || (strcmp(mode, "pio") && strcmp(mode, "mmio") && strcmp(mode, "all"))) {
        fprintf(stderr, "usage: kvm_floor [pio|mmio|all] [N>0]\n");
        return 2;
    }
    if (strcmp(mode, "mmio"))
        printf("ns_per_exit pio %.1f\n", bench("pio", n));
    if (strcmp(mode, "pio"))
        printf("ns_per_exit mmio %.1f\n", bench("mmio", n));
    return 0;
}
