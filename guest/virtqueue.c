/* virtqueue.c: split virtqueues in the legacy contiguous layout, which also meets version 2's alignment. */
#include "virtio.h"

static u8 ring_mem[VIRTIO_MAX_VQS][VQ_RING_PAGES][PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));

static u16 pow2_floor(u32 n)
{
    u16 p = 1;
    while ((u32)p * 2 <= n && p < 0x8000)
        p *= 2;
    return p;
}

bool vq_setup(struct virtio_dev *d, u16 index, u16 max_size)
{
    if (index >= VIRTIO_MAX_VQS)
        return false;
    struct virtq *vq = &d->vqs[index];
    vwrite(d, QueueSel, index);
    if (vread(d, d->version == 1 ? QueuePFN : QueueReady) != 0) {
        printf("virtio-mmio: queue %u already in use\n", index);
        return false;
    }
    u32 max = vread(d, QueueNumMax);
    if (max == 0) {
        printf("virtio-mmio: queue %u not available\n", index);
        return false;
    }
    memset(vq, 0, sizeof(*vq));
    vq->dev = d;
    vq->index = index;
    vq->size = pow2_floor(MIN(MIN(max, (u32)max_size), (u32)VQ_MAX_SIZE));
    vq->ring_pa = (u64)(uintptr_t)ring_mem[index];
    memset(ring_mem[index], 0, sizeof(ring_mem[index]));
    /* "Legacy Interfaces: A Note on Virtqueue Layout": desc, avail, then used at the next page. */
    vq->desc = (struct vring_desc *)(uintptr_t)vq->ring_pa;
    vq->avail = (struct vring_avail *)(uintptr_t)(vq->ring_pa + 16u * vq->size);
    u64 used_off = (16u * vq->size + 2u * (3u + vq->size) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    vq->used = (struct vring_used *)(uintptr_t)(vq->ring_pa + used_off);
    for (u16 i = 0; i < vq->size; i++)
        vq->desc[i].next = (u16)(i + 1);
    vq->free_head = 0;
    vq->num_free = vq->size;

    vwrite(d, QueueNum, vq->size);
    if (d->version == 1) {
        vwrite(d, QueueAlign, PAGE_SIZE);
        vwrite(d, QueuePFN, (u32)(vq->ring_pa >> PAGE_SHIFT));
    } else {
        u64 avail = (u64)(uintptr_t)vq->avail, used = (u64)(uintptr_t)vq->used;
        vwrite(d, QueueDescLow, (u32)vq->ring_pa);
        vwrite(d, QueueDescHigh, (u32)(vq->ring_pa >> 32));
        vwrite(d, QueueDriverLow, (u32)avail);
        vwrite(d, QueueDriverHigh, (u32)(avail >> 32));
        vwrite(d, QueueDeviceLow, (u32)used);
        vwrite(d, QueueDeviceHigh, (u32)(used >> 32));
        vwrite(d, QueueReady, 1);
    }
    vq->ready = true;
    if (index + 1u > d->nvqs)
        d->nvqs = index + 1u;
    return true;
}

int vq_add(struct virtq *vq, const struct vq_buf *bufs, unsigned n)
{
    if (n == 0 || n > vq->num_free)
        return -1;
    u16 head = vq->free_head, i = head, last = head;
    for (unsigned k = 0; k < n; k++) {
        vq->desc[i].addr = bufs[k].addr;
        vq->desc[i].len = bufs[k].len;
        vq->desc[i].flags = (u16)((bufs[k].device_writes ? VRING_DESC_F_WRITE : 0) |
                                  (k + 1 < n ? VRING_DESC_F_NEXT : 0));
        last = i;
        i = vq->desc[i].next;
    }
    vq->free_head = vq->desc[last].next;
    vq->num_free = (u16)(vq->num_free - n);
    u16 idx = vq->avail->idx;
    vq->avail->ring[idx % vq->size] = head;
    barrier(); /* the ring entry before the index (x86 keeps stores in order) */
    *(volatile u16 *)&vq->avail->idx = (u16)(idx + 1);
    return head;
}

void vq_kick(struct virtq *vq)
{
    mb(); /* avail->idx visible before the device looks */
    vwrite(vq->dev, QueueNotify, vq->index);
}

bool vq_has_used(struct virtq *vq) { return *(volatile u16 *)&vq->used->idx != vq->last_used; }

int vq_get_used(struct virtq *vq, u32 *len)
{
    if (!vq_has_used(vq))
        return -1;
    barrier();
    struct vring_used_elem e = vq->used->ring[vq->last_used % vq->size];
    vq->last_used++;
    if (e.id >= vq->size)
        return -1; /* a device bug; do not follow it into our free list */
    /* Return the chain to the free list. */
    u16 i = (u16)e.id;
    unsigned n = 1;
    while ((vq->desc[i].flags & VRING_DESC_F_NEXT) && n < vq->size) {
        i = vq->desc[i].next;
        n++;
    }
    vq->desc[i].next = vq->free_head;
    vq->free_head = (u16)e.id;
    vq->num_free = (u16)(vq->num_free + n);
    vq->last_len = e.len;
    if (len)
        *len = e.len;
    return (int)e.id;
}

bool vq_wait_used(struct virtq *vq, u64 max_ticks)
{
    /* The handler copies used->idx into irq_used; we only look at it, and sleep in hlt meanwhile. */
    return wait_until_changed(&vq->irq_used, vq->last_used, max_ticks);
}
