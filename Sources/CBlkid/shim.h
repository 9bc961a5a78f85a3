#ifndef CBLKID_SHIM_H
#define CBLKID_SHIM_H
#include <blkid/blkid.h>
#endif
