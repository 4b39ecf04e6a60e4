/* scenarios.c: what the guest does after boot, chosen by scenario= on the command line. */
#include "virtio.h"

#define DIRTY_PATTERN 0x5a5aa5a5c3c33c3cULL
#define VERIFY_HEAD 0x0123456789abcdefULL
#define VERIFY_TAIL 0xfedcba9876543210ULL

const char *fail_reason;

static int fail(const char *why)
{
    fail_reason = why;
    return EXIT_FAIL;
}

/* dirty=<size>|all (default all): write one word into each free page, as a workload that used the
   memory and freed it again would leave it; the host then holds those pages resident. */
static u64 dirty_memory(void)
{
    char buf[32] = "all";
    u64 limit = ~0ULL, bytes;
    cmdline_get(cmdline, "dirty", buf, sizeof(buf));
    if (strcmp(buf, "all") != 0 && parse_size(buf, &bytes))
        limit = bytes >> PAGE_SHIFT;
    u64 n = 0;
    for (u64 pfn = free_next(0); pfn < max_pfn && n < limit; pfn = free_next(pfn + 1), n++) {
        *(volatile u64 *)(uintptr_t)(pfn << PAGE_SHIFT) = DIRTY_PATTERN ^ pfn;
        mark_set(MARK_DIRTIED, pfn);
    }
    mem.minor_faults += n;
    printf("dirty: %llu pages (%llu MiB) written\n", n, n >> 8);
    return n;
}

/* Follow the host's target until done() says stop; returns when it does. */
static void follow_target(bool (*done)(void))
{
    for (;;) {
        u64 seen = balloon.dev.irq_count;
        balloon_poll();
        if (done && done())
            return;
        if (!balloon_busy())
            balloon_wait_event(seen, 0);
    }
}

int scenario_selftest(void)
{
    char buf[96];
    snprintf(buf, sizeof(buf), "%d %u %x %#llx %s %c %5d|%-3s|%03u", -42, 42u, 0xbeefu, 0x1234ULL, "ok", 'z', 7,
             "a", 5u);
    if (strcmp(buf, "-42 42 beef 0x1234 ok z     7|a  |005") != 0) {
        printf("selftest: printf gave \"%s\"\n", buf);
        return fail("printf");
    }
    printf("selftest: printf ok\n");

    const char *line = "a=1 b=0x10 c=2M virtio_mmio.device=512@0xd0000000:5 flag "
                       "virtio_mmio.device=4K@0xfeb00e00:12:3 a=3";
    struct mmio_dev_param p;
    u64 v;
    bool ok = cmdline_get(line, "a", buf, sizeof(buf)) && strcmp(buf, "3") == 0;
    ok = ok && cmdline_get(line, "b", buf, sizeof(buf)) && parse_size(buf, &v) && v == 16;
    ok = ok && cmdline_get(line, "c", buf, sizeof(buf)) && parse_size(buf, &v) && v == (2u << 20);
    ok = ok && cmdline_get(line, "flag", buf, sizeof(buf)) && buf[0] == '\0';
    ok = ok && !cmdline_get(line, "missing", buf, sizeof(buf));
    ok = ok && cmdline_get_nth(line, "virtio_mmio.device", 1, buf, sizeof(buf)) &&
         parse_virtio_mmio_device(buf, &p) && p.size == 4096 && p.base == 0xfeb00e00 && p.irq == 12;
    ok = ok && cmdline_get_nth(line, "virtio_mmio.device", 0, buf, sizeof(buf)) &&
         parse_virtio_mmio_device(buf, &p) && p.size == 512 && p.base == 0xd0000000 && p.irq == 5;
    ok = ok && !parse_virtio_mmio_device("512@0xd0000000:0", &p);
    if (!ok)
        return fail("cmdline");
    printf("selftest: cmdline ok\n");

    if (!alloc_selftest())
        return fail("allocator");
    printf("selftest: allocator ok (%llu pages managed, %llu free)\n", mem.total_pages, mem.free_pages);

    /* The LAPIC timer proves the IDT, the LAPIC and sti; bounded so a dead timer cannot hang us. */
    u64 t0 = ticks;
    for (u64 i = 0; i < 20000000 && ticks == t0; i++)
        __asm__ __volatile__("pause");
    if (ticks == t0)
        return fail("no timer interrupt");
    printf("selftest: interrupts ok (ioapic version %#x)\n", ioapic_version);
    return EXIT_PASS;
}

int scenario_demo(void)
{
    dirty_memory();
    balloon_start();
    follow_target(NULL); /* until the VMM stops us */
    return EXIT_PASS;
}

static bool verify_inflated;

/* A second view of guest-physical memory: PML4 slot 1 shares the identity map's PDPT, so ALIAS + pa
   is pa again through other page-table entries (and on the host through other shadow or EPT entries),
   as Linux reaches a page through its direct map and through its owner's mapping.  A host that gives a
   page back must forget every mapping of it, not only the one the guest last used. */
#define ALIAS (1ULL << 39)
extern u64 pml4[];

static volatile u64 *alias_of(u64 pfn)
{
    return (volatile u64 *)(uintptr_t)(ALIAS + (pfn << PAGE_SHIFT));
}

static bool verify_done(void)
{
    if (balloon.work_pending)
        return false;
    if (balloon.num_pages > 0)
        verify_inflated = true;
    return verify_inflated && balloon.num_pages == 0 && balloon.target == 0;
}

int scenario_verify(void)
{
    dirty_memory();
    pml4[1] = pml4[0];
    flush_tlb();
    u64 seen = 0, alias_bad = 0; /* read every dirtied page through the alias too, before the balloon */
    for (u64 pfn = mark_next(MARK_DIRTIED, 0); pfn < max_pfn; pfn = mark_next(MARK_DIRTIED, pfn + 1), seen++)
        if (alias_of(pfn)[0] != (DIRTY_PATTERN ^ pfn) && alias_bad++ < 5)
            printf("verify: alias of page %#llx differs before the balloon\n", pfn << PAGE_SHIFT);
    printf("verify: %llu dirtied pages read through the alias at %#llx\n", seen, ALIAS);
    balloon_start();
    follow_target(verify_done);
    printf("verify: balloon inflated and deflated (%llu pages in, %llu out); checking pages\n",
           balloon.inflated_total, balloon.deflated_total);
    u64 returned = 0, bad = 0, kept = 0, kept_bad = 0;
    for (u64 pfn = mark_next(MARK_RETURNED, 0); pfn < max_pfn; pfn = mark_next(MARK_RETURNED, pfn + 1)) {
        volatile u64 *page = (volatile u64 *)(uintptr_t)(pfn << PAGE_SHIFT);
        if (!page_is_free(pfn) || mark_test(MARK_BALLOON, pfn)) {
            bad++;
            continue;
        }
        page[0] = VERIFY_HEAD ^ pfn;
        page[PAGE_SIZE / 8 - 1] = VERIFY_TAIL ^ pfn;
        if (page[0] != (VERIFY_HEAD ^ pfn) || page[PAGE_SIZE / 8 - 1] != (VERIFY_TAIL ^ pfn)) {
            if (bad++ < 5)
                printf("verify: page %#llx does not hold what was written\n", pfn << PAGE_SHIFT);
        }
        /* The same page through the alias: what was just written, and a write there seen here. */
        volatile u64 *alias = alias_of(pfn);
        alias[1] = VERIFY_TAIL ^ VERIFY_HEAD ^ pfn;
        if ((alias[0] != (VERIFY_HEAD ^ pfn) || page[1] != (VERIFY_TAIL ^ VERIFY_HEAD ^ pfn)) && alias_bad++ < 5)
            printf("verify: page %#llx and its alias differ after the deflate\n", pfn << PAGE_SHIFT);
        returned++;
    }
    /* Pages the balloon never took must still hold the dirty pattern: the host discarded only
       what it was given. */
    for (u64 pfn = mark_next(MARK_DIRTIED, 0); pfn < max_pfn; pfn = mark_next(MARK_DIRTIED, pfn + 1)) {
        if (mark_test(MARK_RETURNED, pfn) || !page_is_free(pfn))
            continue;
        kept++;
        if (*(volatile u64 *)(uintptr_t)(pfn << PAGE_SHIFT) != (DIRTY_PATTERN ^ pfn) && kept_bad++ < 5)
            printf("verify: page %#llx lost its contents but was never ballooned\n", pfn << PAGE_SHIFT);
    }
    printf("verify: %llu returned pages checked, %llu never-ballooned dirty pages intact, %llu alias "
           "mismatches\n", returned, kept - kept_bad, alias_bad);
    if (returned == 0)
        return printf("verify: FAIL no pages came back\n"), fail("no pages came back");
    if (bad || kept_bad || alias_bad) {
        printf("verify: FAIL %llu bad returned pages, %llu corrupted kept pages, %llu alias mismatches\n", bad,
               kept_bad, alias_bad);
        return fail("page contents");
    }
    printf("verify: PASS %llu pages\n", returned);
    return EXIT_PASS;
}

static bool oom_ready(void) { return !balloon.work_pending && balloon.num_pages > 0; }

int scenario_oom(void)
{
    balloon_start();
    printf("oom: waiting for the host to inflate the balloon\n");
    follow_target(oom_ready);
    bool doom = has_feature(&balloon.dev, VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
    /* The goal: every free page plus oom_extra pages (default: 1024, or the whole balloon if
       smaller) that only deflate-on-OOM can supply. */
    u64 extra = cmdline_u64("oom_extra", MIN(1024u, balloon.num_pages));
    u64 goal = mem.free_pages + extra;
    printf("oom: balloon holds %u pages; allocating %llu pages (%llu free + %llu from the balloon)%s\n",
           balloon.num_pages, goal, mem.free_pages, extra, doom ? "" : " without DEFLATE_ON_OOM");
    for (u64 n = 0; n < goal; n++) {
        if (!alloc_page_touch(n)) {
            if (!doom) {
                printf("oom: out of memory (no DEFLATE_ON_OOM) after %llu pages\n", n);
                fail_reason = "out of memory (no DEFLATE_ON_OOM)";
                return EXIT_OOM;
            }
            printf("oom: out of memory after %llu pages although DEFLATE_ON_OOM was negotiated\n", n);
            return fail("out of memory with DEFLATE_ON_OOM");
        }
    }
    balloon_fill_stats();
    printf("oom: PASS allocated=%llu pages, deflate-on-oom released %llu pages, actual=%u\n", goal,
           balloon.oom_deflated, balloon.num_pages);
    return EXIT_PASS;
}

static u64 stats_rounds;
static bool stats_done(void) { return balloon.stats_requests >= stats_rounds; }

int scenario_stats(void)
{
    stats_rounds = cmdline_u64("stats_rounds", 5);
    dirty_memory();
    balloon_start();
    if (!balloon.stats)
        return fail("device did not offer STATS_VQ");
    balloon.verbose_stats = true;
    follow_target(stats_done);
    printf("stats: PASS rounds=%llu\n", balloon.stats_requests);
    return EXIT_PASS;
}

int scenario_bench(void)
{
    u64 n = cmdline_u64("n", 10000);
    u16 port = (u16)cmdline_u64("port", 0x510);
    balloon_start();
    u64 base = balloon.dev.base;
    /* Interrupts off while timing: the tick would add its own exits to the loops. */
    cli();
    u64 t0 = rdtsc();
    for (u64 i = 0; i < n; i++)
        outb(port, (u8)i);
    u64 t1 = rdtsc();
    for (u64 i = 0; i < n; i++)
        (void)mmio_read32(base + InterruptStatus);
    u64 t2 = rdtsc();
    for (u64 i = 0; i < n; i++)
        mmio_write32(base + QueueNotify, 0); /* inflateq, with nothing in it */
    u64 t3 = rdtsc();
    sti();
    printf("bench: pio_write n=%llu cycles=%llu\n", n, t1 - t0);
    printf("bench: mmio_read n=%llu cycles=%llu\n", n, t2 - t1);
    printf("bench: mmio_notify n=%llu cycles=%llu\n", n, t3 - t2);
    return EXIT_PASS;
}

int scenario_triplefault(void)
{
    printf("triplefault: loading an empty IDT and faulting\n");
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) idtr = {0, 0};
    __asm__ __volatile__("cli; lidt %0; ud2" ::"m"(idtr));
    return fail("still running after a triple fault");
}

/* gaps: instructions this host's emulator cannot run (int3, fwait), which the VMM has to finish. */
int scenario_gaps(void)
{
    breakpoints_expected = true;
    __asm__ __volatile__("int3");
    __asm__ __volatile__("fwait");
    __asm__ __volatile__("int3");
    breakpoints_expected = false;
    printf("gaps: int3 raised #BP %llu times, fwait passed\n", breakpoints);
    if (breakpoints != 2)
        return fail("int3 did not raise #BP twice");
    printf("gaps: PASS\n");
    return EXIT_PASS;
}

/* reboot: the first boot asks for a reset through the i8042 (command 0xFE on port 0x64, what Linux's
   reboot=k does); the second boot exits 0.  Which boot this is lives in a word of low RAM that no
   loader writes and a reset does not clear (RAM keeps its contents across a reset, as on a PC). */
#define REBOOT_MARK_PA 0x7000UL
#define REBOOT_MAGIC 0x544f4f424552ULL      /* "REBOOT" */

int scenario_reboot(void)
{
    volatile u64 *mark = (volatile u64 *)REBOOT_MARK_PA;
    if (*mark != REBOOT_MAGIC) {
        *mark = REBOOT_MAGIC;
        printf("reboot: first boot, resetting through the i8042\n");
        outb(0x64, 0xFE);
        cli();
        for (;;)
            __asm__ __volatile__("hlt");
    }
    *mark = 0;
    printf("reboot: second boot\n");
    return EXIT_PASS;
}
