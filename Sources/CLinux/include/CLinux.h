#ifndef CLINUX_H
#define CLINUX_H
/* Linux calls that Glibc's Swift module leaves out (GNU extensions).
   Declared with plain types so this header needs no _GNU_SOURCE. */
#include <spawn.h>
int CLinux_accept4(int fd, int flags);
int CLinux_eventfd(unsigned int initial, int flags);
extern const int CLinux_EFD_NONBLOCK;
extern const int CLinux_EFD_CLOEXEC;
int CLinux_pthread_setname(unsigned long thread, const char *name);
/* pipe2(O_CLOEXEC): both ends close on exec, so no concurrently spawned child inherits them. */
int CLinux_pipe_cloexec(int fds[2]);
/* A block device's size in bytes (BLKGETSIZE64; ioctl is variadic, which Swift cannot call). */
int CLinux_block_device_bytes(int fd, unsigned long long *bytes);
/* A block device's read-only flag (BLKROSET / BLKROGET): writes through any of its nodes fail with EPERM. */
int CLinux_block_set_readonly(int fd, int readonly);
int CLinux_block_readonly(int fd, int *readonly);
/* posix_spawn_file_actions_addclosefrom_np: the child keeps only the descriptors below `from`. */
int CLinux_spawn_close_from(posix_spawn_file_actions_t *actions, int from);
/* Termination signals as bytes on a pipe: a handler on whichever thread a signal
   lands on writes its number (SA_RESTART: interrupted calls resume). Returns the
   read end, or -1. Called once. */
int CLinux_signal_pipe(const int *signals, int count);
/* epoll with the event struct kept on this side (it is packed on x86-64).
   Interest: readable always, writable when asked. Wait fills `tokens` and
   `flags` (1 readable, 2 writable, 4 hang-up or error); returns the count or -1. */
int CLinux_epoll_create(void);
int CLinux_epoll_add(int epoll, int fd, unsigned long long token, int writable);
int CLinux_epoll_modify(int epoll, int fd, unsigned long long token, int writable);
int CLinux_epoll_remove(int epoll, int fd);
int CLinux_epoll_wait(int epoll, unsigned long long *tokens, unsigned int *flags, int capacity, int timeout_ms);
/* malloc_trim(0): hands memory malloc keeps free back to the system. */
int CLinux_malloc_trim(void);

/* pidfd_open(2) (Linux 5.3): a descriptor that polls readable once the process
   has exited; -1 with errno ENOSYS on older kernels. */
int CLinux_pidfd_open(int pid);
#endif
