#include "CCurl.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* One pointer per libcurl function the driver calls, filled by CCurl_load. */
static struct {
    CURLcode (*global_init)(long);
    char *(*version)(void);
    CURL *(*easy_init)(void);
    void (*easy_cleanup)(CURL *);
    void (*easy_reset)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    CURLM *(*multi_init)(void);
    CURLMcode (*multi_cleanup)(CURLM *);
    CURLMcode (*multi_add_handle)(CURLM *, CURL *);
    CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
    CURLMcode (*multi_perform)(CURLM *, int *);
    CURLMcode (*multi_poll)(CURLM *, struct curl_waitfd *, unsigned int, int, int *);
    CURLMcode (*multi_wakeup)(CURLM *);
    CURLMsg *(*multi_info_read)(CURLM *, int *);
    CURLMcode (*multi_setopt)(CURLM *, CURLMoption, ...);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
} curl;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char failure[256];

static void load(void) {
    /* The soname of libcurl 7.16 and later (Debian's libcurl4). */
    void *library = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        snprintf(failure, sizeof failure, "cannot load libcurl.so.4 (install libcurl4): %s", dlerror());
        return;
    }
#define RESOLVE(field, name) \
    if (!(*(void **)&curl.field = dlsym(library, name))) { \
        snprintf(failure, sizeof failure, "libcurl.so.4 lacks %s (libcurl 7.68 or later is needed)", name); \
        return; \
    }
    RESOLVE(global_init, "curl_global_init")
    RESOLVE(version, "curl_version")
    RESOLVE(easy_init, "curl_easy_init")
    RESOLVE(easy_cleanup, "curl_easy_cleanup")
    RESOLVE(easy_reset, "curl_easy_reset")
    RESOLVE(easy_strerror, "curl_easy_strerror")
    RESOLVE(easy_setopt, "curl_easy_setopt")
    RESOLVE(easy_getinfo, "curl_easy_getinfo")
    RESOLVE(multi_init, "curl_multi_init")
    RESOLVE(multi_cleanup, "curl_multi_cleanup")
    RESOLVE(multi_add_handle, "curl_multi_add_handle")
    RESOLVE(multi_remove_handle, "curl_multi_remove_handle")
    RESOLVE(multi_perform, "curl_multi_perform")
    RESOLVE(multi_poll, "curl_multi_poll")
    RESOLVE(multi_wakeup, "curl_multi_wakeup")
    RESOLVE(multi_info_read, "curl_multi_info_read")
    RESOLVE(multi_setopt, "curl_multi_setopt")
    RESOLVE(slist_append, "curl_slist_append")
    RESOLVE(slist_free_all, "curl_slist_free_all")
#undef RESOLVE
}

int CCurl_load(char *error, size_t size) {
    pthread_once(&once, load);
    if (failure[0] == 0) return 0;
    if (error && size) snprintf(error, size, "%s", failure);
    return -1;
}

CURLcode CCurl_global_init(long flags) { return curl.global_init(flags); }
const char *CCurl_version(void) { return curl.version(); }
CURL *CCurl_easy_init(void) { return curl.easy_init(); }
void CCurl_easy_cleanup(CURL *handle) { curl.easy_cleanup(handle); }
void CCurl_easy_reset(CURL *handle) { curl.easy_reset(handle); }
const char *CCurl_easy_strerror(CURLcode code) { return curl.easy_strerror(code); }
CURLM *CCurl_multi_init(void) { return curl.multi_init(); }
CURLMcode CCurl_multi_cleanup(CURLM *multi) { return curl.multi_cleanup(multi); }
CURLMcode CCurl_multi_add_handle(CURLM *multi, CURL *handle) { return curl.multi_add_handle(multi, handle); }
CURLMcode CCurl_multi_remove_handle(CURLM *multi, CURL *handle) { return curl.multi_remove_handle(multi, handle); }
CURLMcode CCurl_multi_perform(CURLM *multi, int *running) { return curl.multi_perform(multi, running); }
CURLMcode CCurl_multi_poll(CURLM *multi, struct curl_waitfd *extra, unsigned int count, int timeout_ms, int *ready) {
    return curl.multi_poll(multi, extra, count, timeout_ms, ready);
}
CURLMcode CCurl_multi_wakeup(CURLM *multi) { return curl.multi_wakeup(multi); }
CURLMsg *CCurl_multi_info_read(CURLM *multi, int *remaining) { return curl.multi_info_read(multi, remaining); }
struct curl_slist *CCurl_slist_append(struct curl_slist *list, const char *text) { return curl.slist_append(list, text); }
void CCurl_slist_free_all(struct curl_slist *list) { if (list) curl.slist_free_all(list); }

CURLcode CCurl_easy_setopt_long(CURL *h, CURLoption o, long v) { return curl.easy_setopt(h, o, v); }
CURLcode CCurl_easy_setopt_string(CURL *h, CURLoption o, const char *v) { return curl.easy_setopt(h, o, v); }
CURLcode CCurl_easy_setopt_pointer(CURL *h, CURLoption o, void *v) { return curl.easy_setopt(h, o, v); }
CURLcode CCurl_easy_setopt_slist(CURL *h, CURLoption o, struct curl_slist *v) { return curl.easy_setopt(h, o, v); }
CURLcode CCurl_easy_setopt_write_callback(CURL *h, size_t (*cb)(char *, size_t, size_t, void *)) {
    return curl.easy_setopt(h, CURLOPT_WRITEFUNCTION, cb);
}
CURLcode CCurl_easy_setopt_header_callback(CURL *h, size_t (*cb)(char *, size_t, size_t, void *)) {
    return curl.easy_setopt(h, CURLOPT_HEADERFUNCTION, cb);
}
CURLcode CCurl_easy_getinfo_long(CURL *h, CURLINFO i, long *out) { return curl.easy_getinfo(h, i, out); }
CURLcode CCurl_easy_getinfo_double(CURL *h, CURLINFO i, double *out) { return curl.easy_getinfo(h, i, out); }
CURLMcode CCurl_multi_setopt_long(CURLM *m, CURLMoption o, long v) { return curl.multi_setopt(m, o, v); }
