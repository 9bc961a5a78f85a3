#ifndef CCURL_H
#define CCURL_H
#include <stddef.h>
#include <curl/curl.h>

/* libcurl, loaded with dlopen at the first HTTP request rather than linked:
   libcurl and what it pulls in (OpenSSL, GnuTLS, Kerberos, LDAP, libssh2 ...)
   are over 5 MiB of resident memory, which a node plugin that never talks
   HTTP should not pay. The binary names no curl symbol; every call goes
   through these functions, which call the loaded library. */

/* Loads libcurl.so.4 once (thread-safe). 0 on success; otherwise -1 with
   the reason in `error`. Every other function here requires a success first. */
int CCurl_load(char *error, size_t size);

CURLcode CCurl_global_init(long flags);
const char *CCurl_version(void);
CURL *CCurl_easy_init(void);
void CCurl_easy_cleanup(CURL *handle);
void CCurl_easy_reset(CURL *handle);
const char *CCurl_easy_strerror(CURLcode code);
CURLM *CCurl_multi_init(void);
CURLMcode CCurl_multi_cleanup(CURLM *multi);
CURLMcode CCurl_multi_add_handle(CURLM *multi, CURL *handle);
CURLMcode CCurl_multi_remove_handle(CURLM *multi, CURL *handle);
CURLMcode CCurl_multi_perform(CURLM *multi, int *running);
CURLMcode CCurl_multi_poll(CURLM *multi, struct curl_waitfd *extra, unsigned int count, int timeout_ms, int *ready);
CURLMcode CCurl_multi_wakeup(CURLM *multi);
CURLMsg *CCurl_multi_info_read(CURLM *multi, int *remaining);
struct curl_slist *CCurl_slist_append(struct curl_slist *list, const char *text);
void CCurl_slist_free_all(struct curl_slist *list);

/* curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot
   call; one typed wrapper per argument kind keeps the casts in one place. */
CURLcode CCurl_easy_setopt_long(CURL *h, CURLoption o, long v);
CURLcode CCurl_easy_setopt_string(CURL *h, CURLoption o, const char *v);
CURLcode CCurl_easy_setopt_pointer(CURL *h, CURLoption o, void *v);
CURLcode CCurl_easy_setopt_slist(CURL *h, CURLoption o, struct curl_slist *v);
CURLcode CCurl_easy_setopt_write_callback(CURL *h, size_t (*cb)(char *, size_t, size_t, void *));
CURLcode CCurl_easy_setopt_header_callback(CURL *h, size_t (*cb)(char *, size_t, size_t, void *));
CURLcode CCurl_easy_getinfo_long(CURL *h, CURLINFO i, long *out);
CURLcode CCurl_easy_getinfo_double(CURL *h, CURLINFO i, double *out);
CURLMcode CCurl_multi_setopt_long(CURLM *m, CURLMoption o, long v);
#endif
