#define _GNU_SOURCE
#include <pthread.h>
#include <linux/fs.h>
#include <stdint.h>
#include <malloc.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
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

/* The write end of the pipe termination signals are forwarded to. */
static int signal_pipe_write = -1;

static void forward_signal(int signal) {
    int saved = errno;  /* one write(2): async-signal-safe */
    unsigned char byte = (unsigned char)signal;
    (void)write(signal_pipe_write, &byte, 1);
    errno = saved;
}

int CLinux_signal_pipe(const int *signals, int count) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    signal_pipe_write = fds[1];
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = forward_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    for (int i = 0; i < count; i++) {
        if (sigaction(signals[i], &action, NULL) != 0) return -1;
    }
    return fds[0];
}

int CLinux_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

static int epoll_control(int epoll, int op, int fd, unsigned long long token, int writable) {
    struct epoll_event event = { .events = EPOLLIN | EPOLLRDHUP | (writable ? EPOLLOUT : 0), .data.u64 = token };
    return epoll_ctl(epoll, op, fd, &event);
}
int CLinux_epoll_add(int epoll, int fd, unsigned long long token, int writable) {
    return epoll_control(epoll, EPOLL_CTL_ADD, fd, token, writable);
}
int CLinux_epoll_modify(int epoll, int fd, unsigned long long token, int writable) {
    return epoll_control(epoll, EPOLL_CTL_MOD, fd, token, writable);
}
int CLinux_epoll_remove(int epoll, int fd) { return epoll_ctl(epoll, EPOLL_CTL_DEL, fd, 0); }

int CLinux_epoll_wait(int epoll, unsigned long long *tokens, unsigned int *flags, int capacity, int timeout_ms) {
    struct epoll_event events[64];
    if (capacity > 64) capacity = 64;
    int count = epoll_wait(epoll, events, capacity, timeout_ms);
    for (int i = 0; i < count; i++) {
        tokens[i] = events[i].data.u64;
        flags[i] = (events[i].events & EPOLLIN ? 1u : 0u) | (events[i].events & EPOLLOUT ? 2u : 0u)
            | (events[i].events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP) ? 4u : 0u);
    }
    return count;
}

int CLinux_malloc_trim(void) { return malloc_trim(0); }

#include <sys/syscall.h>
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
int CLinux_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
