#ifndef CNGHTTP2_SHIM_H
#define CNGHTTP2_SHIM_H
#include <nghttp2/nghttp2.h>

/* nghttp2_nv wants mutable pointers; Swift hands out const ones for the
   header bytes it owns. nghttp2 copies name and value on submit, so the
   cast is safe: the library never writes through these pointers. */
static inline nghttp2_nv CNGHTTP2_make_nv(const uint8_t *name, size_t namelen,
                                          const uint8_t *value, size_t valuelen) {
    nghttp2_nv nv;
    nv.name = (uint8_t *)name;
    nv.namelen = namelen;
    nv.value = (uint8_t *)value;
    nv.valuelen = valuelen;
    nv.flags = NGHTTP2_NV_FLAG_NONE;
    return nv;
}
#endif
