/* hostile.c: the hostile-guest scenario: attacks on the device through real MMIO and crafted rings. */
#include "virtio.h"

int scenario_hostile(void)
{
    printf("hostile: not implemented yet\n");
    return EXIT_FAIL;
}
