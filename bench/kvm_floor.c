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
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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

struct vm {
    int kvm, vm, vcpu;
    struct kvm_run *run;
    uint8_t *ram;
};

static void vm_create(struct vm *v, const uint8_t *code, size_t code_len)
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

    v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
    if (v->vcpu < 0)
        die("KVM_CREATE_VCPU");
    int run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < 0)
        die("KVM_GET_VCPU_MMAP_SIZE");
    v->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
    if (v->run == MAP_FAILED)
        die("mmap kvm_run");

    /* 32-bit protected mode without a GDT in memory: KVM takes the hidden segment state as given, and the
       loop never loads a segment register. */
    struct kvm_sregs sregs;
    if (ioctl(v->vcpu, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    flat(&sregs.cs, 0x08, 0xb);             /* execute/read, accessed */
    flat(&sregs.ds, 0x10, 0x3);             /* read/write, accessed */
    sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
    sregs.cr0 = 0x11;                       /* PE | ET */
    if (ioctl(v->vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = CODE_GPA, .rflags = 0x2 };
    if (ioctl(v->vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");
}

static void vm_destroy(struct vm *v)
{
    close(v->vcpu);
    close(v->vm);
    close(v->kvm);
    munmap(v->ram, RAM_SIZE);
}

/* One round trip: enter the guest, get the expected exit back. */
static void run_once(struct vm *v, int want_mmio)
{
    if (ioctl(v->vcpu, KVM_RUN, 0) < 0)
        die("KVM_RUN");
    struct kvm_run *r = v->run;
    if (!want_mmio && r->exit_reason == KVM_EXIT_IO && r->io.port == BENCH_PORT)
        return;
    if (want_mmio && r->exit_reason == KVM_EXIT_MMIO && r->mmio.phys_addr == BENCH_MMIO && !r->mmio.is_write)
        return;                              /* the read returns whatever is in mmio.data: zeroes */
    fprintf(stderr, "kvm_floor: unexpected exit reason %u\n", r->exit_reason);
    exit(1);
}

static double bench(const char *mode, long n)
{
    /* The port is above 0xff, out of reach of `out %al, $imm8`, so DX holds it. */
    const uint8_t pio_code[] = {
        0x66, 0xba, BENCH_PORT & 0xff, BENCH_PORT >> 8,   /* mov $BENCH_PORT, %dx */
        0xee,                                             /* 1: out %al, (%dx) */
        0xeb, 0xfd,                                       /*    jmp 1b */
    };
    const uint8_t mmio_code[] = {
        0xa1, BENCH_MMIO & 0xff, (BENCH_MMIO >> 8) & 0xff, (BENCH_MMIO >> 16) & 0xff, BENCH_MMIO >> 24,
                                                          /* 1: mov BENCH_MMIO, %eax */
        0xeb, 0xf9,                                       /*    jmp 1b */
    };
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

int main(int argc, char **argv)
{
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
