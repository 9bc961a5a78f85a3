#define _GNU_SOURCE
#include <pthread.h>
#include <linux/fs.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include "CLinux.h"

int CLinux_accept4(int fd, int flags) { return accept4(fd, 0, 0, flags); }
int CLinux_eventfd(unsigned int initial, int flags) { return eventfd(initial, flags); }
const int CLinux_EFD_NONBLOCK = EFD_NONBLOCK;
const int CLinux_EFD_CLOEXEC = EFD_CLOEXEC;
int CLinux_pthread_setname(unsigned long thread, const char *name) {
    return pthread_setname_np((pthread_t)thread, name);
}

int CLinux_block_device_bytes(int fd, unsigned long long *bytes) {
    uint64_t size = 0;
    int result = ioctl(fd, BLKGETSIZE64, &size);
    *bytes = size;
    return result;
}

int CLinux_block_set_readonly(int fd, int readonly) { return ioctl(fd, BLKROSET, &readonly); }

int CLinux_block_readonly(int fd, int *readonly) { return ioctl(fd, BLKROGET, readonly); }

int CLinux_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int CLinux_spawn_close_from(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}
