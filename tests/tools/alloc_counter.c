// LD_PRELOAD shim counting heap allocations of a process. On SIGUSR2 it writes
// the count so far to the file named by LB_ALLOC_COUNT_FILE (one decimal line).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_ulong allocations;
static void* (*real_malloc)(size_t);
static void* (*real_calloc)(size_t, size_t);
static void* (*real_realloc)(void*, size_t);
static int (*real_posix_memalign)(void**, size_t, size_t);
static void* (*real_aligned_alloc)(size_t, size_t);

// dlsym itself may call calloc before real_calloc is known: serve it from here.
static char bootstrap[4096];
static size_t bootstrap_used;

static void* bootstrap_alloc(size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (bootstrap_used + n > sizeof bootstrap) return NULL;
  void* p = bootstrap + bootstrap_used;
  bootstrap_used += n;
  return p;
}

static void on_sigusr2(int sig) {
  (void)sig;
  const char* path = getenv("LB_ALLOC_COUNT_FILE");
  if (!path) return;
  char text[32];
  int len = 0;
  unsigned long v = atomic_load(&allocations);
  char digits[24];
  int nd = 0;
  do { digits[nd++] = (char)('0' + v % 10); v /= 10; } while (v);
  while (nd) text[len++] = digits[--nd];
  text[len++] = '\n';
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  ssize_t w = write(fd, text, (size_t)len);
  (void)w;
  close(fd);
}

__attribute__((constructor)) static void init(void) {
  real_malloc = dlsym(RTLD_NEXT, "malloc");
  real_calloc = dlsym(RTLD_NEXT, "calloc");
  real_realloc = dlsym(RTLD_NEXT, "realloc");
  real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
  real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigusr2;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR2, &sa, NULL);
}

void* malloc(size_t n) {
  if (!real_malloc) return bootstrap_alloc(n);
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return real_malloc(n);
}

void* calloc(size_t a, size_t b) {
  if (!real_calloc) return bootstrap_alloc(a * b);  // static memory is already zero
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return real_calloc(a, b);
}

void* realloc(void* p, size_t n) {
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return real_realloc(p, n);
}

int posix_memalign(void** p, size_t align, size_t n) {
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return real_posix_memalign(p, align, n);
}

void* aligned_alloc(size_t align, size_t n) {
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return real_aligned_alloc(align, n);
}

void free(void* p) {
  static void (*real_free)(void*);
  if ((char*)p >= bootstrap && (char*)p < bootstrap + sizeof bootstrap) return;
  if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
  real_free(p);
}
