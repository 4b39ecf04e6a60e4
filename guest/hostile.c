/* hostile.c: the hostile-guest scenario: attacks on the device through real MMIO and crafted rings. */
#include "virtio.h"

extern u64 pml4[], pdpt[], pd[];

static u64 timeout_ticks;   /* how long a health-check request may take */
static bool strict;         /* a stall without DEVICE_NEEDS_RESET counts as a failure */
static unsigned attacks, survived;
static bool attack_failed;  /* the attack itself saw the device do harm */
static bool spec_deviation; /* the device broke a spec MUST without harm: fails only when strict */
static char observed[160];  /* what the attack itself saw, reported with the verdict */

enum expect {
    EXPECT_WORKS, /* the driver's own state is intact: the device should still work or ask for reset */
    EXPECT_RESET, /* the attack left the device half set up by design: reset, then it must work */
};

static struct virtio_dev *dev(void) { return &balloon.dev; }

/* A page handed to the device in an attack: never touched again (the host may own it). */
static u32 victim_pfn(void)
{
    u64 pa = alloc_page();
    if (!pa) {
        printf("hostile: out of memory for victim pages\n");
        guest_exit(EXIT_FAIL);
    }
    return (u32)(pa >> PAGE_SHIFT);
}

/* Put one buffer on vq, notify, sleep until it is used; false on timeout. */
static bool xfer(struct virtq *vq, const void *buf, u32 len)
{
    struct vq_buf b = {(u64)(uintptr_t)buf, len, false};
    if (vq_add(vq, &b, 1) < 0)
        return false;
    vq_kick(vq);
    while (!vq_has_used(vq))
        if (!vq_wait_used(vq, timeout_ticks))
            return false;
    return vq_get_used(vq, NULL) >= 0;
}

/* The health check: one page inflated and deflated again, `actual` written, target readable. */
static bool roundtrip(void)
{
    static u32 pfn[1];
    u64 pa = alloc_page();
    if (!pa)
        return false;
    pfn[0] = (u32)(pa >> PAGE_SHIFT);
    if (!xfer(balloon.inflate, pfn, 4) || !xfer(balloon.deflate, pfn, 4))
        return false; /* the page is leaked: the host may still hold it */
    free_page(pa);
    balloon_update_actual();
    balloon_read_target();
    return !(virtio_status(dev()) & DEVICE_NEEDS_RESET);
}

/* Forget what the attack put on a queue: all descriptors free, caught up with the used ring. */
static void resync(struct virtq *vq)
{
    if (!vq || !vq->ready)
        return;
    for (u16 i = 0; i < vq->size; i++)
        vq->desc[i].next = (u16)(i + 1);
    vq->free_head = 0;
    vq->num_free = vq->size;
    vq->last_used = *(volatile u16 *)&vq->used->idx;
    vq->irq_used = vq->last_used;
}

static bool reinit(void)
{
    const char *err = balloon_reinit();
    if (err)
        printf("hostile: reinit failed: %s (status %#x)\n", err, virtio_status(dev()));
    return !err && roundtrip();
}

static u64 storms_before;

static void verdict(const char *attack, enum expect expect)
{
    char how[200];
    bool ok;
    sleep_ticks(TIMER_HZ / 20); /* let the device answer or complain */
    u32 status = virtio_status(dev());
    if (dev()->storms != storms_before) {
        size_t len = strlen(observed);
        snprintf(observed + len, sizeof(observed) - len, "%sinterrupt line stuck high, masked",
                 len ? ", " : "");
    }
    if (status & DEVICE_NEEDS_RESET) {
        ok = reinit();
        snprintf(how, sizeof(how), "DEVICE_NEEDS_RESET (status %#x), reset and used again", status);
    } else if (expect == EXPECT_RESET) {
        ok = reinit();
        snprintf(how, sizeof(how), "status %#x, reset and used again", status);
    } else {
        resync(balloon.inflate);
        resync(balloon.deflate);
        if (roundtrip()) {
            ok = true;
            snprintf(how, sizeof(how), "still works");
        } else {
            ok = reinit() && !strict;
            snprintf(how, sizeof(how), "no answer and no DEVICE_NEEDS_RESET (status %#x), reset and used again",
                     virtio_status(dev()));
        }
    }
    attacks++;
    ok = ok && !attack_failed && !(strict && spec_deviation);
    attack_failed = spec_deviation = false;
    if (ok) {
        survived++;
        printf("hostile: %s: survived (%s%s%s)\n", attack, observed, observed[0] ? "; " : "", how);
    } else {
        printf("hostile: %s: FAILED (%s%s%s)\n", attack, observed, observed[0] ? "; " : "", how);
    }
    observed[0] = '\0';
}

/* --- ring attacks ------------------------------------------------------------------------------ */

static void publish(struct virtq *vq, u16 head)
{
    u16 idx = vq->avail->idx;
    vq->avail->ring[idx % vq->size] = head;
    barrier();
    *(volatile u16 *)&vq->avail->idx = (u16)(idx + 1);
    vq_kick(vq);
}

static u32 attack_pfns[BALLOON_ARRAY_PFNS_MAX] __attribute__((aligned(64)));

static void descriptor_loop(void)
{
    struct virtq *vq = balloon.inflate;
    attack_pfns[0] = attack_pfns[1] = victim_pfn();
    vq->desc[0] = (struct vring_desc){(u64)(uintptr_t)attack_pfns, 4, VRING_DESC_F_NEXT, 1};
    vq->desc[1] = (struct vring_desc){(u64)(uintptr_t)&attack_pfns[1], 4, VRING_DESC_F_NEXT, 0};
    publish(vq, 0);
}

static void chain_longer_than_queue(void)
{
    struct virtq *vq = balloon.inflate;
    u32 pfn = victim_pfn();
    for (u16 i = 0; i < vq->size; i++) {
        attack_pfns[i % BALLOON_ARRAY_PFNS_MAX] = pfn;
        /* Every descriptor points on, the last back to the first: no end within the queue size. */
        vq->desc[i] = (struct vring_desc){(u64)(uintptr_t)attack_pfns, 4, VRING_DESC_F_NEXT,
                                          (u16)((i + 1) % vq->size)};
    }
    publish(vq, 0);
}

static void next_out_of_range(void)
{
    struct virtq *vq = balloon.inflate;
    attack_pfns[0] = victim_pfn();
    vq->desc[0] = (struct vring_desc){(u64)(uintptr_t)attack_pfns, 4, VRING_DESC_F_NEXT, 0xfff0};
    publish(vq, 0);
}

static void head_out_of_range(void)
{
    struct virtq *vq = balloon.inflate;
    publish(vq, (u16)(vq->size + 3));
}

static void indirect_at(u64 table, u32 len)
{
    struct virtq *vq = balloon.inflate;
    vq->desc[0] = (struct vring_desc){table, len, VRING_DESC_F_INDIRECT, 0};
    publish(vq, 0);
}

static void indirect_outside_ram(void) { indirect_at(0x7ff000000000ULL, 16 * 4); }
static void indirect_at_mmio(void) { indirect_at(dev()->base, 16 * 8); }

static void indirect_loop(void)
{
    /* An indirect table in RAM whose entries chain back to themselves. */
    static struct vring_desc table[4] __attribute__((aligned(16)));
    attack_pfns[0] = victim_pfn();
    for (int i = 0; i < 4; i++)
        table[i] = (struct vring_desc){(u64)(uintptr_t)attack_pfns, 4, VRING_DESC_F_NEXT, (u16)((i + 1) % 4)};
    indirect_at((u64)(uintptr_t)table, sizeof(table));
}

static void buffer_outside_ram(void)
{
    struct virtq *vq = balloon.inflate;
    vq->desc[0] = (struct vring_desc){0x7ff000000000ULL, 1024, 0, 0};
    vq->desc[1] = (struct vring_desc){dev()->base, 256, 0, 0}; /* and one over the device window */
    publish(vq, 0);
    publish(vq, 1);
}

static void avail_index_jump(void)
{
    struct virtq *vq = balloon.inflate;
    *(volatile u16 *)&vq->avail->idx = (u16)(vq->avail->idx + vq->size + 7);
    vq_kick(vq);
}

static void used_ring_in_rom(void)
{
    /* A zero-length and a huge buffer: neither holds a whole number of PFNs. */
    struct virtq *vq = balloon.inflate;
    attack_pfns[0] = victim_pfn();
    vq->desc[0] = (struct vring_desc){(u64)(uintptr_t)attack_pfns, 0, 0, 0};
    vq->desc[1] = (struct vring_desc){(u64)(uintptr_t)attack_pfns, 3, 0, 0};
    vq->desc[2] = (struct vring_desc){(u64)(uintptr_t)attack_pfns, 0xffffffffu, 0, 0};
    vq->desc[3] = (struct vring_desc){(u64)(uintptr_t)attack_pfns, 4, VRING_DESC_F_WRITE, 0};
    for (u16 i = 0; i < 4; i++)
        publish(vq, i);
}

/* --- PFN attacks ------------------------------------------------------------------------------- */

static void pfns_beyond_ram(void)
{
    u32 n = 0;
    attack_pfns[n++] = (u32)max_pfn;
    attack_pfns[n++] = (u32)max_pfn + 1000;
    attack_pfns[n++] = 0xc0000;     /* 3 GiB: the MMIO hole */
    attack_pfns[n++] = (u32)(dev()->base >> PAGE_SHIFT);
    attack_pfns[n++] = 0xfee00;     /* the LAPIC */
    attack_pfns[n++] = 0xffffffffu;
    bool in = xfer(balloon.inflate, attack_pfns, n * 4);
    bool out = xfer(balloon.deflate, attack_pfns, n * 4);
    snprintf(observed, sizeof(observed), "inflate %s, deflate %s", in ? "acked" : "not acked",
             out ? "acked" : "not acked");
}

static void switch_page_tables(void)
{
    /* Move to a copy of the page tables, so that the originals can be handed to the host and the
       guest lives on: the device cannot tell which pages a guest still needs. */
    u64 *n4 = (u64 *)(uintptr_t)alloc_page(), *n3 = (u64 *)(uintptr_t)alloc_page();
    for (int i = 0; i < 512; i++) {
        n4[i] = pml4[i];
        n3[i] = pdpt[i];
    }
    n4[0] = (u64)(uintptr_t)n3 | 0x3;
    for (int g = 0; g < 4; g++) {
        u64 *npd = (u64 *)(uintptr_t)alloc_page();
        for (int i = 0; i < 512; i++)
            npd[i] = pd[g * 512 + i];
        n3[g] = (u64)(uintptr_t)npd | 0x3;
    }
    __asm__ __volatile__("mov %0, %%cr3" ::"r"((u64)(uintptr_t)n4) : "memory");
}

static void page_table_pfns(void)
{
    switch_page_tables();
    u32 n = 0;
    attack_pfns[n++] = (u32)((u64)(uintptr_t)pml4 >> PAGE_SHIFT);
    attack_pfns[n++] = (u32)((u64)(uintptr_t)pdpt >> PAGE_SHIFT);
    for (int g = 0; g < 4; g++)
        attack_pfns[n++] = (u32)((u64)(uintptr_t)&pd[g * 512] >> PAGE_SHIFT);
    bool in = xfer(balloon.inflate, attack_pfns, n * 4);
    snprintf(observed, sizeof(observed), "boot page tables inflated (%s) after moving to a copy",
             in ? "acked" : "not acked");
    /* They stay in the host's hands: never deflated, never touched. */
}

static void same_pfn_twice(void)
{
    u32 pfn = victim_pfn();
    attack_pfns[0] = attack_pfns[1] = attack_pfns[2] = pfn;
    bool a = xfer(balloon.inflate, attack_pfns, 3 * 4);
    bool b = xfer(balloon.inflate, attack_pfns, 4);
    bool c = xfer(balloon.deflate, attack_pfns, 4);
    snprintf(observed, sizeof(observed), "inflated 4 times, deflated once: %s",
             a && b && c ? "all acked" : "not all acked");
}

static void deflate_never_inflated(void)
{
    /* A page of ours with contents: the device must not take it away on a deflate. */
    u64 pa = alloc_page();
    volatile u64 *page = (volatile u64 *)(uintptr_t)pa;
    page[0] = 0xfeedfacecafef00dULL;
    page[511] = pa;
    attack_pfns[0] = (u32)(pa >> PAGE_SHIFT);
    attack_pfns[1] = 0;
    attack_pfns[2] = (u32)max_pfn + 7;
    bool acked = xfer(balloon.deflate, attack_pfns, 3 * 4);
    bool intact = page[0] == 0xfeedfacecafef00dULL && page[511] == pa;
    snprintf(observed, sizeof(observed), "deflate %s, our page %s", acked ? "acked" : "not acked",
             intact ? "intact" : "LOST ITS CONTENTS");
    if (intact)
        free_page(pa);
    else
        attack_failed = true, printf("hostile: the device changed a page it was never given\n");
}

static void stats_odd_sizes(void)
{
    struct virtq *vq = balloon.stats;
    if (!vq) {
        snprintf(observed, sizeof(observed), "no stats queue: skipped the buffers");
        return;
    }
    static u8 odd[64] __attribute__((aligned(16)));
    static const struct virtio_balloon_stat unknown[3] = {{0x7777, 1}, {0xffff, ~0ULL}, {100, 42}};
    memcpy(odd, unknown, sizeof(unknown));
    /* Buffers of 7, 23 and 0 bytes, a writable one, and unknown tags; more than one outstanding. */
    struct vq_buf b[4] = {{(u64)(uintptr_t)odd, 7, false}, {(u64)(uintptr_t)odd, 23, false},
                          {(u64)(uintptr_t)odd, 0, false}, {(u64)(uintptr_t)odd, 30, true}};
    for (int i = 0; i < 4; i++)
        vq_add(vq, &b[i], 1);
    vq_kick(vq);
}

/* --- register attacks -------------------------------------------------------------------------- */

static void actual_as_bytes(void)
{
    u64 cfg = dev()->base + Config;
    for (u32 i = 0; i < 4; i++)
        mmio_write8(cfg + 4 + i, (u8)(0x11 * (i + 1)));
    mmio_write16(cfg + 4, 0xbeef);
    mmio_write8(cfg + 7, 0xff); /* the MSB last: "actual" reads 0xff..beef now */
    u32 seen = virtio_config_read32(dev(), 4);
    balloon_update_actual();
    snprintf(observed, sizeof(observed), "actual read back as %#x", seen);
}

static void config_flood(void)
{
    u64 n = cmdline_u64("hostile_flood", 4096);
    u64 cfg = dev()->base + Config;
    for (u64 i = 0; i < n; i++) {
        u32 off = (u32)((i * 37) % 0x100);
        switch (i % 3) {
        case 0: mmio_write32(cfg + (off & ~3u), (u32)(i * 2654435761u)); break;
        case 1: mmio_write16(cfg + (off & ~1u), (u16)i); break;
        default: mmio_write8(cfg + off, (u8)i); break;
        }
    }
    balloon_update_actual();
    snprintf(observed, sizeof(observed), "%llu writes, num_pages now reads %u", n, balloon_read_target());
}

static void register_abuse(void)
{
    struct virtio_dev *d = dev();
    /* Writes to read-only registers, reads of write-only ones, narrow and unaligned accesses,
       offsets past the registers, and InterruptACK of bits that were never set. */
    vwrite(d, MagicValue, 0);
    vwrite(d, Version, 7);
    vwrite(d, DeviceID, 0);
    vwrite(d, QueueNumMax, 0xffff);
    vwrite(d, InterruptStatus, 0xff);
    vwrite(d, ConfigGeneration, 5);
    (void)vread(d, QueueNotify);
    (void)vread(d, InterruptACK);
    (void)vread(d, DriverFeatures);
    (void)mmio_read8(d->base + Status + 1);
    (void)mmio_read16(d->base + MagicValue + 2);
    mmio_write8(d->base + QueueSel + 1, 1);
    mmio_write16(d->base + Status + 2, 0xffff);
    (void)vread(d, 0x0f8);
    vwrite(d, 0x0f8, 0xdeadbeef);
    vwrite(d, InterruptACK, 0xfffffffc);
    vwrite(d, QueueSel, 0xffff); /* a queue that does not exist, then its registers */
    (void)vread(d, QueueNumMax);
    vwrite(d, QueueNum, 8);
    vwrite(d, QueueNotify, 0xffff);
    vwrite(d, QueueNotify, 3);
    vwrite(d, QueueSel, 0);
    u32 magic = vread(d, MagicValue);
    snprintf(observed, sizeof(observed), "magic still %#x", magic);
    if (magic != VIRTIO_MMIO_MAGIC)
        attack_failed = true;
}

/* Start a handshake by hand, as far as FEATURES_OK with the usual features. */
static void begin_by_hand(void)
{
    virtio_begin(dev());
    virtio_negotiate(dev(), balloon.wanted);
}

static void queue_size_bad(u32 size)
{
    struct virtio_dev *d = dev();
    begin_by_hand();
    vwrite(d, QueueSel, 0);
    u32 max = vread(d, QueueNumMax);
    vq_setup(d, 0, VQ_MAX_SIZE);
    if (d->version == 2)
        vwrite(d, QueueReady, 0); /* QueueNum may change only while the queue is not ready */
    if (size == 0)
        size = max * 2;
    vwrite(d, QueueNum, size);
    if (d->version == 2)
        vwrite(d, QueueReady, 1);
    vq_setup(d, 1, VQ_MAX_SIZE);
    virtio_driver_ok(d);
    balloon.inflate = &d->vqs[0];
    attack_pfns[0] = victim_pfn();
    struct vq_buf b = {(u64)(uintptr_t)attack_pfns, 4, false};
    vq_add(balloon.inflate, &b, 1);
    vq_kick(balloon.inflate);
    snprintf(observed, sizeof(observed), "QueueNumMax %u, wrote QueueNum %u, status %#x", max, size,
             virtio_status(d));
}

static void queue_size_above_max(void) { queue_size_bad(0); }
static void queue_size_not_pow2(void) { queue_size_bad(VQ_MAX_SIZE - 1); }

static void queue_address(u64 addr)
{
    struct virtio_dev *d = dev();
    begin_by_hand();
    vwrite(d, QueueSel, 0);
    u32 max = vread(d, QueueNumMax);
    vwrite(d, QueueNum, MIN(max, 16u));
    if (d->version == 1) {
        vwrite(d, QueueAlign, PAGE_SIZE);
        vwrite(d, QueuePFN, (u32)(addr >> PAGE_SHIFT));
    } else {
        vwrite(d, QueueDescLow, (u32)addr);
        vwrite(d, QueueDescHigh, (u32)(addr >> 32));
        vwrite(d, QueueDriverLow, (u32)(addr + 0x100));
        vwrite(d, QueueDriverHigh, (u32)((addr + 0x100) >> 32));
        vwrite(d, QueueDeviceLow, (u32)(addr + 0x200));
        vwrite(d, QueueDeviceHigh, (u32)((addr + 0x200) >> 32));
        vwrite(d, QueueReady, 1);
    }
    vq_setup(d, 1, VQ_MAX_SIZE);
    virtio_driver_ok(d);
    vwrite(d, QueueNotify, 0);
    vwrite(d, QueueNotify, 0);
    snprintf(observed, sizeof(observed), "queue 0 at %#llx, status %#x", addr, virtio_status(d));
}

static void queue_outside_ram(void) { queue_address(dev()->version == 1 ? 0xfffff000000ULL : 0x7ff000000000ULL); }
static void queue_over_device(void) { queue_address(dev()->base & ~(PAGE_SIZE - 1)); }

static void status_out_of_order(void)
{
    struct virtio_dev *d = dev();
    /* DRIVER_OK with nothing before it, then bits cleared while running, then FEATURES_OK first. */
    virtio_reset(d);
    vwrite(d, Status, DRIVER_OK);
    vwrite(d, QueueNotify, 0);
    u32 s1 = vread(d, Status);
    balloon_reinit();
    vwrite(d, Status, ACKNOWLEDGE); /* clears DRIVER, FEATURES_OK and DRIVER_OK */
    vwrite(d, QueueNotify, 0);
    u32 s2 = vread(d, Status);
    virtio_reset(d);
    vwrite(d, Status, FEATURES_OK);
    vwrite(d, Status, FEATURES_OK | DRIVER_OK | DEVICE_NEEDS_RESET);
    u32 s3 = vread(d, Status);
    snprintf(observed, sizeof(observed), "status after each: %#x, %#x, %#x", s1, s2, s3);
}

static void notify_before_driver_ok(void)
{
    struct virtio_dev *d = dev();
    begin_by_hand();
    vq_setup(d, 0, VQ_MAX_SIZE);
    vq_setup(d, 1, VQ_MAX_SIZE);
    balloon.inflate = &d->vqs[0];
    balloon.deflate = &d->vqs[1];
    attack_pfns[0] = victim_pfn();
    struct vq_buf b = {(u64)(uintptr_t)attack_pfns, 4, false};
    vq_add(balloon.inflate, &b, 1);
    for (u32 q = 0; q < 4; q++)
        vwrite(d, QueueNotify, q);
    vwrite(d, QueueNotify, 0xffff);
    sleep_ticks(TIMER_HZ / 20);
    u16 used_before = *(volatile u16 *)&balloon.inflate->used->idx;
    virtio_driver_ok(d);
    snprintf(observed, sizeof(observed), "%s before DRIVER_OK (version %u)",
             used_before ? "buffer used" : "nothing used", d->version);
    if (used_before && d->version == 2)
        spec_deviation = true, printf("hostile: spec deviation: device used a buffer before DRIVER_OK\n");
}

static void features_never_offered(void)
{
    struct virtio_dev *d = dev();
    virtio_begin(d);
    u64 bogus = ~d->offered | (d->offered & (1ULL << VIRTIO_F_VERSION_1));
    vwrite(d, DriverFeaturesSel, 1);
    vwrite(d, DriverFeatures, (u32)(bogus >> 32));
    vwrite(d, DriverFeaturesSel, 0);
    vwrite(d, DriverFeatures, (u32)bogus);
    vwrite(d, DriverFeaturesSel, 7); /* a window that does not exist */
    vwrite(d, DriverFeatures, 0xffffffff);
    vwrite(d, Status, vread(d, Status) | FEATURES_OK);
    u32 s = vread(d, Status);
    snprintf(observed, sizeof(observed), "FEATURES_OK %s",
             d->version == 1 ? "not used by legacy" : (s & FEATURES_OK) ? "ACCEPTED" : "refused");
    if (d->version == 2 && (s & FEATURES_OK))
        spec_deviation = true, printf("hostile: spec deviation: device accepted features it never offered\n");
}

static void interrupt_storm_ack(void)
{
    /* Notify the idle queues in a tight loop: no buffers, so no work and no interrupts expected. */
    for (int i = 0; i < 2000; i++)
        vwrite(dev(), QueueNotify, (u32)(i & 1));
    snprintf(observed, sizeof(observed), "2000 notifies of empty queues");
}

struct attack {
    const char *name;
    void (*run)(void);
    enum expect expect;
};

static const struct attack attack_list[] = {
    {"descriptor loop", descriptor_loop, EXPECT_WORKS},
    {"chain longer than the queue", chain_longer_than_queue, EXPECT_WORKS},
    {"next index out of range", next_out_of_range, EXPECT_WORKS},
    {"head index out of range", head_out_of_range, EXPECT_WORKS},
    {"indirect table outside RAM", indirect_outside_ram, EXPECT_WORKS},
    {"indirect table at the MMIO hole", indirect_at_mmio, EXPECT_WORKS},
    {"indirect table loop", indirect_loop, EXPECT_WORKS},
    {"buffers outside RAM and over the device window", buffer_outside_ram, EXPECT_WORKS},
    {"avail index jump", avail_index_jump, EXPECT_WORKS},
    {"buffer lengths 0, 3, 4 GiB and device-writable", used_ring_in_rom, EXPECT_WORKS},
    {"PFNs beyond RAM", pfns_beyond_ram, EXPECT_WORKS},
    {"PFNs of the guest's page tables", page_table_pfns, EXPECT_WORKS},
    {"same PFN inflated twice", same_pfn_twice, EXPECT_WORKS},
    {"deflate of never-inflated PFNs", deflate_never_inflated, EXPECT_WORKS},
    {"stats buffers of odd sizes with unknown tags", stats_odd_sizes, EXPECT_WORKS},
    {"actual written as single bytes", actual_as_bytes, EXPECT_WORKS},
    {"config-space write flood", config_flood, EXPECT_WORKS},
    {"register abuse", register_abuse, EXPECT_WORKS},
    {"notify flood on empty queues", interrupt_storm_ack, EXPECT_WORKS},
    {"QueueSize above QueueSizeMax", queue_size_above_max, EXPECT_RESET},
    {"QueueSize not a power of two", queue_size_not_pow2, EXPECT_RESET},
    {"queue address outside RAM", queue_outside_ram, EXPECT_RESET},
    {"queue address over the device window", queue_over_device, EXPECT_RESET},
    {"status bits out of order", status_out_of_order, EXPECT_RESET},
    {"notify before DRIVER_OK", notify_before_driver_ok, EXPECT_WORKS},
    {"feature bits never offered", features_never_offered, EXPECT_RESET},
};

int scenario_hostile(void)
{
    extern const char *fail_reason;
    timeout_ticks = cmdline_u64("hostile_timeout", 2) * TIMER_HZ;
    bool strict_mode = cmdline_u64("hostile_strict", 0) != 0;
    balloon_start();
    if (!roundtrip()) {
        fail_reason = "device does not work before any attack";
        return EXIT_FAIL;
    }
    printf("hostile: %u attacks, %s\n", (unsigned)ARRAY_SIZE(attack_list),
           strict_mode ? "strict (stalls without DEVICE_NEEDS_RESET and spec deviations fail)" : "lenient");
    char only[48] = "";
    cmdline_get(cmdline, "hostile_only", only, sizeof(only));
    for (unsigned i = 0; i < ARRAY_SIZE(attack_list); i++) {
        if (only[0] && strncmp(only, attack_list[i].name, strlen(only)) != 0)
            continue;
        strict = strict_mode;
        storms_before = dev()->storms;
        attack_list[i].run();
        verdict(attack_list[i].name, attack_list[i].expect);
    }
    printf("hostile: %u of %u attacks survived\n", survived, attacks);
    if (survived != attacks) {
        fail_reason = "an attack was not survived";
        return EXIT_FAIL;
    }
    return EXIT_PASS;
}
