/*
 * workspace.c -- the workspaces of the mHC kernels (mhc_hc_ws).
 *
 * An mhc_hc_ws (owned by a Python MHCLayer, freed with it) keeps one buffer per
 * concurrent chunk, grown on demand and reused by every later call, so that a
 * layer's forward allocates nothing once warm. A chunk takes a free slot
 * atomically; with no workspace, all slots busy or no memory, it mallocs.
 */
#include "mhc_internal.h"

#define MHC_WS_SLOTS 64
struct mhc_hc_ws {
    struct {
        void *buf;
        size_t size;
        int busy; /* atomic */
    } slot[MHC_WS_SLOTS];
};

mhc_hc_ws *mhc_hc_ws_create(void)
{
    mhc_hc_ws *w = mhc_malloc(sizeof *w);
    if (w)
        memset(w, 0, sizeof *w);
    return w;
}

void mhc_hc_ws_destroy(mhc_hc_ws *w)
{
    if (!w)
        return;
    for (int i = 0; i < MHC_WS_SLOTS; i++)
        mhc_free(w->slot[i].buf);
    mhc_free(w);
}

void *mhc_ws_take(mhc_hc_ws *w, size_t size, int *slot)
{
    *slot = -1;
    for (int i = 0; w && i < MHC_WS_SLOTS; i++) {
        int idle = 0;
        if (!__atomic_compare_exchange_n(&w->slot[i].busy, &idle, 1, 0, __ATOMIC_ACQUIRE,
                                         __ATOMIC_RELAXED))
            continue;
        if (w->slot[i].size < size) {
            void *p = mhc_realloc(w->slot[i].buf, size);
            if (!p) {
                __atomic_store_n(&w->slot[i].busy, 0, __ATOMIC_RELEASE);
                break;
            }
            w->slot[i].buf = p;
            w->slot[i].size = size;
        }
        *slot = i;
        return w->slot[i].buf;
    }
    return mhc_malloc(size);
}

void mhc_ws_give(mhc_hc_ws *w, int slot, void *buf)
{
    if (slot >= 0)
        __atomic_store_n(&w->slot[slot].busy, 0, __ATOMIC_RELEASE);
    else
        mhc_free(buf);
}
