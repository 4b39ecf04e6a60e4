/* virtio.h: virtio-mmio registers, split virtqueues and the balloon driver's interface. */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H
#include "kernel.h"

/* virtio-mmio register offsets (virtio spec, "MMIO Device Register Layout"; legacy ones from
   "Legacy interface"). */
enum virtio_mmio_reg {
    MagicValue = 0x000,
    Version = 0x004,
    DeviceID = 0x008,
    VendorID = 0x00c,
    DeviceFeatures = 0x010,
    DeviceFeaturesSel = 0x014,
    DriverFeatures = 0x020,
    DriverFeaturesSel = 0x024,
    GuestPageSize = 0x028, /* legacy */
    QueueSel = 0x030,
    QueueNumMax = 0x034,
    QueueNum = 0x038,
    QueueAlign = 0x03c, /* legacy */
    QueuePFN = 0x040,   /* legacy */
    QueueReady = 0x044,
    QueueNotify = 0x050,
    InterruptStatus = 0x060,
    InterruptACK = 0x064,
    Status = 0x070,
    QueueDescLow = 0x080,
    QueueDescHigh = 0x084,
    QueueDriverLow = 0x090,
    QueueDriverHigh = 0x094,
    QueueDeviceLow = 0x0a0,
    QueueDeviceHigh = 0x0a4,
    ConfigGeneration = 0x0fc,
    Config = 0x100,
};
#define VIRTIO_MMIO_MAGIC 0x74726976 /* "virt" */

/* Device status bits ("Device Status Field"). */
#define ACKNOWLEDGE 1u
#define DRIVER 2u
#define DRIVER_OK 4u
#define FEATURES_OK 8u
#define DEVICE_NEEDS_RESET 64u
#define FAILED 128u

#define VIRTIO_INT_USED 1u
#define VIRTIO_INT_CONFIG 2u

#define VIRTIO_F_VERSION_1 32
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_BALLOON 5

/* Split virtqueue ("Split Virtqueues"). */
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
struct vring_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};
struct vring_avail {
    u16 flags;
    u16 idx;
    u16 ring[];
};
struct vring_used_elem {
    u32 id;
    u32 len;
};
struct vring_used {
    u16 flags;
    u16 idx;
    struct vring_used_elem ring[];
};

#define VQ_MAX_SIZE 128    /* two pages of ring memory in the legacy layout */
#define VQ_RING_PAGES 2
#define VIRTIO_MAX_VQS 4

struct virtio_dev;
struct virtq {
    struct virtio_dev *dev;
    u16 index, size;
    bool ready;
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    u64 ring_pa;             /* page-aligned, VQ_RING_PAGES long */
    u16 free_head, num_free;
    u16 last_used;           /* next used entry the driver will consume */
    volatile u64 irq_used;   /* used->idx as the interrupt handler last saw it */
    u32 last_len;
};

struct virtio_dev {
    u64 base;
    u32 irq, version, device_id;
    u64 offered, features;
    struct virtq vqs[VIRTIO_MAX_VQS];
    unsigned nvqs;
    volatile u64 irq_count;     /* device interrupts handled */
    volatile u64 config_events; /* InterruptStatus bit 1 seen */
    volatile u64 used_events;   /* InterruptStatus bit 0 seen */
    volatile u32 last_isr;
    u32 spurious_run;  /* interrupts in a row with InterruptStatus 0 */
    bool irq_masked;   /* masked at the IOAPIC after an interrupt storm */
    u64 storms;
};

static inline u32 vread(struct virtio_dev *d, u32 reg) { return mmio_read32(d->base + reg); }
static inline void vwrite(struct virtio_dev *d, u32 reg, u32 v) { mmio_write32(d->base + reg, v); }
static inline bool has_feature(struct virtio_dev *d, unsigned bit) { return (d->features >> bit) & 1; }

/* virtio_mmio.c */
extern u64 virtio_timeout_ticks;
/* Find the first device with this DeviceID among the command line's virtio_mmio.device= entries. */
bool virtio_find(u32 device_id, struct virtio_dev *out);
/* Reset, ACKNOWLEDGE, DRIVER, read features (v1: GuestPageSize). false = unusable device. */
bool virtio_begin(struct virtio_dev *d);
/* Accept offered & wanted (VERSION_1 added when offered), FEATURES_OK (v2) read back. */
bool virtio_negotiate(struct virtio_dev *d, u64 wanted);
bool virtio_driver_ok(struct virtio_dev *d);
void virtio_reset(struct virtio_dev *d);
u32 virtio_status(struct virtio_dev *d);
u32 virtio_config_read32(struct virtio_dev *d, u32 offset);
void virtio_config_write32(struct virtio_dev *d, u32 offset, u32 v);
/* Route the device's IRQ to its handler (reads InterruptStatus, writes it to InterruptACK). */
bool virtio_attach_irq(struct virtio_dev *d);

/* virtqueue.c */
bool vq_setup(struct virtio_dev *d, u16 index, u16 max_size);
struct vq_buf {
    u64 addr;
    u32 len;
    bool device_writes;
};
/* Add a chain of n buffers; returns the head descriptor or -1 when the ring is full. */
int vq_add(struct virtq *vq, const struct vq_buf *bufs, unsigned n);
void vq_kick(struct virtq *vq);
/* Head id of the next used buffer (its length in *len), or -1 when there is none. */
int vq_get_used(struct virtq *vq, u32 *len);
bool vq_has_used(struct virtq *vq);
/* Sleep (sti; hlt) until the interrupt handler has seen a used buffer; false on timeout. */
bool vq_wait_used(struct virtq *vq, u64 max_ticks);

/* balloon.c */
#define VIRTIO_BALLOON_F_MUST_TELL_HOST 0
#define VIRTIO_BALLOON_F_STATS_VQ 1
#define VIRTIO_BALLOON_F_DEFLATE_ON_OOM 2
#define BALLOON_ARRAY_PFNS_MAX 256
#define BALLOON_OOM_PAGES 256
#define BALLOON_NR_STATS 7

struct virtio_balloon_stat {
    u16 tag;
    u64 val;
} __attribute__((packed));

struct balloon {
    struct virtio_dev dev;
    struct virtq *inflate, *deflate, *stats;
    u32 num_pages; /* pages the host holds (what `actual` says) */
    u32 target;    /* num_pages from the config space, last read */
    bool work_pending, out_of_puff, puff_reported, verbose_stats;
    u64 seen_config;
    u64 wanted; /* features the driver asks for */
    u64 stats_requests;
    u64 oom_deflated;
    u64 inflated_total, deflated_total;
    u32 last_printed_target, last_printed_actual;
    u32 pfns[BALLOON_ARRAY_PFNS_MAX] __attribute__((aligned(64)));
    struct virtio_balloon_stat stats_buf[BALLOON_NR_STATS] __attribute__((aligned(64)));
};
extern struct balloon balloon;
/* Probe, handshake, queues, stats primed, DRIVER_OK; exits EXIT_NO_DEVICE when there is none. */
void balloon_start(void);
/* Reset and redo the handshake (queues, stats primed, DRIVER_OK); NULL or what failed. */
const char *balloon_reinit(void);
/* One step of work: refill a returned stats buffer, follow a config change by one batch. */
void balloon_poll(void);
/* True while the balloon still has work to do towards its target. */
bool balloon_busy(void);
/* Sleep until the device interrupts (or max_ticks pass, 0 = forever). */
void balloon_wait_event(u64 seen_irq, u64 max_ticks);
u32 balloon_read_target(void);
void balloon_update_actual(void);
unsigned balloon_fill(u32 n);
unsigned balloon_leak(u32 n);
void balloon_fill_stats(void);

#endif
