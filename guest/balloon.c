/* balloon.c: the virtio memory balloon driver, with the semantics of Linux's virtio_balloon.c. */
#include "virtio.h"

/* Stats tags ("Memory Statistics Tags"). */
enum {
    VIRTIO_BALLOON_S_SWAP_IN = 0,
    VIRTIO_BALLOON_S_SWAP_OUT = 1,
    VIRTIO_BALLOON_S_MAJFLT = 2,
    VIRTIO_BALLOON_S_MINFLT = 3,
    VIRTIO_BALLOON_S_MEMFREE = 4,
    VIRTIO_BALLOON_S_MEMTOT = 5,
    VIRTIO_BALLOON_S_AVAIL = 6,
};
#define CFG_NUM_PAGES 0
#define CFG_ACTUAL 4
#define PUFF_RETRY_TICKS (TIMER_HZ / 5) /* Linux sleeps 200 ms before retrying */

struct balloon balloon;
static u64 balloon_hint; /* where leak looks for ballooned pages next */

u32 balloon_read_target(void)
{
    balloon.target = virtio_config_read32(&balloon.dev, CFG_NUM_PAGES);
    return balloon.target;
}

void balloon_update_actual(void)
{
    virtio_config_write32(&balloon.dev, CFG_ACTUAL, balloon.num_pages);
}

/* Hand the PFN array to the host on vq and sleep until it has used the buffer. */
static void tell_host(struct virtq *vq, unsigned n)
{
    struct vq_buf buf = {(u64)(uintptr_t)balloon.pfns, (u32)(n * sizeof(u32)), false};
    if (vq_add(vq, &buf, 1) < 0) {
        printf("balloon: %s queue full\n", vq == balloon.inflate ? "inflate" : "deflate");
        printf("scenario %s: FAIL balloon queue full\n", current_scenario);
        guest_exit(EXIT_FAIL);
    }
    vq_kick(vq);
    while (!vq_has_used(vq)) {
        if (!vq_wait_used(vq, virtio_timeout_ticks)) {
            printf("balloon: no answer from the host on the %s queue (status %#x)\n",
                   vq == balloon.inflate ? "inflate" : "deflate", virtio_status(&balloon.dev));
            printf("scenario %s: FAIL balloon timeout\n", current_scenario);
            guest_exit(EXIT_FAIL);
        }
    }
    /* The used length is ignored ("some devices put the total descriptor length there"). */
    vq_get_used(vq, NULL);
}

unsigned balloon_fill(u32 n)
{
    n = MIN(n, (u32)BALLOON_ARRAY_PFNS_MAX);
    /* 4 KiB balloon pages: PFN = address >> 12, the allocator's own page frame numbers. */
    unsigned got = alloc_bulk(balloon.pfns, n);
    if (got == 0)
        return 0;
    /* From here on the pages are the host's: never touched again until deflated. */
    tell_host(balloon.inflate, got);
    marks_update(balloon.pfns, got, MARK_BALLOON, MARK_RETURNED);
    balloon.num_pages += got;
    balloon.inflated_total += got;
    return got;
}

unsigned balloon_leak(u32 n)
{
    n = MIN(MIN(n, (u32)BALLOON_ARRAY_PFNS_MAX), balloon.num_pages);
    /* Taken off the balloon list, not yet usable. */
    unsigned got = mark_take(MARK_BALLOON, balloon.pfns, n, &balloon_hint);
    if (got == 0)
        return 0;
    /* Tell the host before reusing the pages: with MUST_TELL_HOST this order is required, and
       Linux keeps it always. */
    tell_host(balloon.deflate, got);
    marks_update(balloon.pfns, got, MARK_RETURNED, -1);
    free_bulk(balloon.pfns, got);
    balloon.num_pages -= got;
    balloon.deflated_total += got;
    return got;
}

void balloon_fill_stats(void)
{
    u64 free_bytes = mem.free_pages * PAGE_SIZE;
    /* Ballooned pages count as available when the balloon gives them back on OOM. */
    u64 avail = free_bytes;
    if (has_feature(&balloon.dev, VIRTIO_BALLOON_F_DEFLATE_ON_OOM))
        avail += (u64)balloon.num_pages * PAGE_SIZE;
    const struct {
        u16 tag;
        u64 val;
    } s[BALLOON_NR_STATS] = {
        {VIRTIO_BALLOON_S_SWAP_IN, 0},  /* no swap */
        {VIRTIO_BALLOON_S_SWAP_OUT, 0},
        {VIRTIO_BALLOON_S_MAJFLT, 0},   /* nothing is ever read from a backing store */
        {VIRTIO_BALLOON_S_MINFLT, mem.minor_faults},
        {VIRTIO_BALLOON_S_MEMFREE, free_bytes},
        {VIRTIO_BALLOON_S_MEMTOT, mem.ram_bytes},
        {VIRTIO_BALLOON_S_AVAIL, avail},
    };
    /* Legacy stats are guest-endian, modern ones little-endian: the same bytes on x86. */
    for (unsigned i = 0; i < BALLOON_NR_STATS; i++) {
        balloon.stats_buf[i].tag = s[i].tag;
        balloon.stats_buf[i].val = s[i].val;
    }
}

static void stats_queue_buffer(void)
{
    struct vq_buf buf = {(u64)(uintptr_t)balloon.stats_buf, sizeof(balloon.stats_buf), false};
    vq_add(balloon.stats, &buf, 1);
}

static unsigned balloon_oom(void)
{
    if (!has_feature(&balloon.dev, VIRTIO_BALLOON_F_DEFLATE_ON_OOM) || balloon.num_pages == 0)
        return 0;
    unsigned got = balloon_leak(BALLOON_OOM_PAGES);
    balloon_update_actual();
    balloon.oom_deflated += got;
    printf("balloon: deflate-on-oom released %u pages, actual=%u\n", got, balloon.num_pages);
    return got;
}

const char *balloon_reinit(void)
{
    struct virtio_dev *d = &balloon.dev;
    if (!virtio_begin(d))
        return "handshake";
    if (!virtio_negotiate(d, balloon.wanted))
        return "feature negotiation";
    /* Queues are numbered densely: inflateq 0, deflateq 1, statsq 2 when STATS_VQ. */
    if (!vq_setup(d, 0, VQ_MAX_SIZE) || !vq_setup(d, 1, VQ_MAX_SIZE) ||
        (has_feature(d, VIRTIO_BALLOON_F_STATS_VQ) && !vq_setup(d, 2, VQ_MAX_SIZE))) {
        vwrite(d, Status, vread(d, Status) | FAILED);
        return "queue setup";
    }
    balloon.inflate = &d->vqs[0];
    balloon.deflate = &d->vqs[1];
    balloon.stats = NULL;
    if (has_feature(d, VIRTIO_BALLOON_F_STATS_VQ)) {
        /* "Memory Statistics": prime the queue with one buffer, notify only after DRIVER_OK. */
        balloon.stats = &d->vqs[2];
        balloon_fill_stats();
        stats_queue_buffer();
    }
    if (!virtio_driver_ok(d))
        return "DRIVER_OK refused";
    if (balloon.stats)
        vq_kick(balloon.stats);
    return NULL;
}

void balloon_start(void)
{
    struct virtio_dev *d = &balloon.dev;
    if (!virtio_find(VIRTIO_ID_BALLOON, d)) {
        printf("balloon: no virtio-mmio balloon (DeviceID 5) on the command line\n");
        printf("scenario %s: FAIL no balloon device\n", current_scenario);
        guest_exit(EXIT_NO_DEVICE);
    }
    balloon.wanted = (1ULL << VIRTIO_BALLOON_F_MUST_TELL_HOST) | (1ULL << VIRTIO_BALLOON_F_STATS_VQ) |
                     (1ULL << VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
    /* balloon_features=<mask> lets a test refuse features the device offers. */
    balloon.wanted &= cmdline_u64("balloon_features", ~0ULL);
    if (!virtio_attach_irq(d)) {
        printf("scenario %s: FAIL balloon irq\n", current_scenario);
        guest_exit(EXIT_NO_DEVICE);
    }
    const char *err = balloon_reinit();
    if (err) {
        printf("scenario %s: FAIL balloon %s (status %#x)\n", current_scenario, err, virtio_status(d));
        guest_exit(EXIT_NO_DEVICE);
    }
    printf("balloon: version %u features offered %#llx accepted %#llx%s%s%s\n", d->version, d->offered,
           d->features, has_feature(d, VIRTIO_BALLOON_F_MUST_TELL_HOST) ? " MUST_TELL_HOST" : "",
           has_feature(d, VIRTIO_BALLOON_F_STATS_VQ) ? " STATS_VQ" : "",
           has_feature(d, VIRTIO_BALLOON_F_DEFLATE_ON_OOM) ? " DEFLATE_ON_OOM" : "");
    oom_hook = balloon_oom;
    balloon_read_target();
    balloon_update_actual();
    balloon.work_pending = true; /* as Linux's probe: work towards a target set before we came up */
    balloon.last_printed_target = balloon.last_printed_actual = ~0u;
}

bool balloon_busy(void)
{
    return balloon.work_pending && !balloon.out_of_puff;
}

void balloon_poll(void)
{
    struct virtio_dev *d = &balloon.dev;
    if (balloon.stats && vq_has_used(balloon.stats)) {
        /* The device returned the stats buffer: that is its request for fresh numbers. */
        vq_get_used(balloon.stats, NULL);
        balloon_fill_stats();
        stats_queue_buffer();
        vq_kick(balloon.stats);
        balloon.stats_requests++;
        if (balloon.verbose_stats)
            printf("stats: request %llu memfree=%llu memtot=%llu avail=%llu minflt=%llu\n",
                   balloon.stats_requests, balloon.stats_buf[4].val, balloon.stats_buf[5].val,
                   balloon.stats_buf[6].val, balloon.stats_buf[3].val);
    }
    if (d->config_events != balloon.seen_config) {
        balloon.seen_config = d->config_events;
        u32 status = virtio_status(d);
        if (status & DEVICE_NEEDS_RESET)
            printf("balloon: device needs reset (status %#x)\n", status);
        balloon.work_pending = true;
        balloon.out_of_puff = false;
        balloon.puff_reported = false;
        printf("balloon: config num_pages=%u actual=%u\n", balloon_read_target(), balloon.num_pages);
    }
    if (!balloon.work_pending)
        return;
    u32 target = balloon_read_target();
    if (target > balloon.num_pages) {
        u32 want = target - balloon.num_pages;
        unsigned got = balloon_fill(want);
        balloon_update_actual();
        if (got < MIN(want, (u32)BALLOON_ARRAY_PFNS_MAX)) {
            if (!balloon.puff_reported)
                printf("balloon: out of puff, can't get %u pages (target=%u actual=%u free=%llu)\n",
                       want - got, target, balloon.num_pages, mem.free_pages);
            balloon.out_of_puff = true;
            balloon.puff_reported = true;
        }
        return;
    }
    if (target < balloon.num_pages) {
        balloon_leak(balloon.num_pages - target);
        balloon_update_actual();
        return;
    }
    balloon.work_pending = false;
    balloon_update_actual();
    if (target != balloon.last_printed_target || balloon.num_pages != balloon.last_printed_actual) {
        printf("balloon: target=%u actual=%u free=%llu\n", target, balloon.num_pages, mem.free_pages);
        balloon.last_printed_target = target;
        balloon.last_printed_actual = balloon.num_pages;
    }
}

void balloon_wait_event(u64 seen_irq, u64 max_ticks)
{
    if (balloon.out_of_puff && balloon.work_pending) {
        /* Out of puff: retry after a while, as Linux does, unless the host changes its mind first. */
        wait_until_changed(&balloon.dev.irq_count, seen_irq, PUFF_RETRY_TICKS);
        balloon.out_of_puff = false;
        return;
    }
    wait_until_changed(&balloon.dev.irq_count, seen_irq, max_ticks);
}
