/* A STUN Binding load generator that is not the bottleneck: sendmmsg/recvmmsg, one thread.
 *
 * Not a test; bench/stun_capacity.py compiles and runs it. It sends minimal
 * 20-byte RFC 8489 Binding requests to HOST:PORT from SOCKETS connected UDP
 * sockets and matches answers by transaction id (a per-run tag and a
 * sequence number). Closed loop (--rate 0): at most WINDOW requests
 * outstanding. Open loop (--rate R): R requests a second over all sockets,
 * sent in bursts every half millisecond, whatever comes back.
 *
 * Only requests sent after --warmup count, for --seconds. A request not
 * answered within --timeout counts as lost. Bounded: it stops sending after
 * warmup + seconds or --max requests, waits at most --timeout for the last
 * answers, and exits. It prints one line of key=value pairs:
 * sent, answered, lost, late (answers after their timeout or unknown),
 * malformed, send_errors, seconds (measured), p50_us, p99_us, cpu_percent
 * (its own user+system time over the measured seconds).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_SOCKETS 64
#define RING (1u << 22)              /* outstanding requests tracked: far above rate x timeout */
#define HISTOGRAM_US 200000          /* RTTs in 1 µs buckets up to 200 ms; longer ones in the last */
#define TICK_NS 500000L

enum { FREE = 0, PENDING = 1, MEASURED = 2 };

static double
now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double
cpu_seconds(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec
        + usage.ru_stime.tv_usec / 1e6;
}

static double option(int argc, char **argv, const char *name, double fallback)
{
    for (int i = 3; i + 1 < argc; i += 2)
        if (strcmp(argv[i], name) == 0)
            return atof(argv[i + 1]);
    return fallback;
}

static uint32_t tag;
static unsigned char *state;
static double *sent_at;
static uint64_t *histogram;
static uint64_t sent, answered, lost, late, malformed, send_errors, next_seq, oldest, pending;
static double measure_from, timeout;

static void
request_bytes(unsigned char *out, uint64_t seq)
{
    static const unsigned char header[8] = {0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42};
    uint32_t t = htonl(tag);
    memcpy(out, header, 8);
    memcpy(out + 8, &t, 4);
    for (int i = 0; i < 8; i++)
        out[12 + i] = (unsigned char)(seq >> (56 - 8 * i));
}

/* Send up to count requests on fd in one sendmmsg; returns how many went. */
static int
send_requests(int fd, int count, double now)
{
    static unsigned char buffers[BATCH][20];
    struct mmsghdr headers[BATCH];
    struct iovec vectors[BATCH];
    int result;
    if (count > BATCH)
        count = BATCH;
    memset(headers, 0, sizeof headers);
    for (int i = 0; i < count; i++) {
        request_bytes(buffers[i], next_seq + (uint64_t)i);
        vectors[i].iov_base = buffers[i];
        vectors[i].iov_len = 20;
        headers[i].msg_hdr.msg_iov = &vectors[i];
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    result = sendmmsg(fd, headers, (unsigned int)count, MSG_DONTWAIT);
    if (result <= 0) {
        send_errors++;
        return 0;
    }
    for (int i = 0; i < result; i++) {
        uint64_t seq = next_seq++;
        state[seq % RING] = now >= measure_from ? MEASURED : PENDING;
        sent_at[seq % RING] = now;
        pending++;
        if (now >= measure_from)
            sent++;
    }
    return result;
}

/* Read every answer waiting on fd. */
static void
receive_answers(int fd)
{
    static unsigned char buffers[BATCH][512];
    struct mmsghdr headers[BATCH];
    struct iovec vectors[BATCH];
    for (;;) {
        int got;
        double now;
        memset(headers, 0, sizeof headers);
        for (int i = 0; i < BATCH; i++) {
            vectors[i].iov_base = buffers[i];
            vectors[i].iov_len = sizeof buffers[i];
            headers[i].msg_hdr.msg_iov = &vectors[i];
            headers[i].msg_hdr.msg_iovlen = 1;
        }
        got = recvmmsg(fd, headers, BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0)
            return;
        now = now_seconds();
        for (int i = 0; i < got; i++) {
            const unsigned char *b = buffers[i];
            uint64_t seq = 0;
            uint32_t t;
            if (headers[i].msg_len < 20 || b[0] != 0x01 || b[1] != 0x01) {
                malformed++;
                continue;
            }
            memcpy(&t, b + 8, 4);
            for (int k = 0; k < 8; k++)
                seq = seq << 8 | b[12 + k];
            if (ntohl(t) != tag || seq < oldest || seq >= next_seq || state[seq % RING] == FREE) {
                late++;
                continue;
            }
            if (state[seq % RING] == MEASURED) {
                double us = (now - sent_at[seq % RING]) * 1e6;
                answered++;
                histogram[us < HISTOGRAM_US - 1 ? (size_t)us : HISTOGRAM_US - 1]++;
            }
            state[seq % RING] = FREE;
            pending--;
        }
        if (got < BATCH)
            return;
    }
}

/* Retire requests from the oldest on: answered ones, and those past their timeout (lost). */
static void
expire(double now, int all)
{
    while (oldest < next_seq) {
        unsigned char s = state[oldest % RING];
        if (s != FREE) {
            if (!all && sent_at[oldest % RING] > now - timeout)
                return;
            if (s == MEASURED)
                lost++;
            state[oldest % RING] = FREE;
            pending--;
        }
        oldest++;
    }
}

static double
percentile(double p)
{
    uint64_t rank = (uint64_t)(p / 100 * (double)answered), seen = 0;
    if (answered == 0)
        return -1;
    for (size_t us = 0; us < HISTOGRAM_US; us++) {
        seen += histogram[us];
        if (seen > rank)
            return (double)us + 0.5;
    }
    return HISTOGRAM_US;
}

int
main(int argc, char **argv)
{
    int fds[MAX_SOCKETS];
    struct pollfd polls[MAX_SOCKETS];
    struct sockaddr_in server;
    double rate, warmup, seconds, start, stop_at, cpu_start = -1, measured, cpu;
    long window, sockets, max_requests;
    uint64_t outstanding_limit;
    int turn = 0;

    if (argc < 3) {
        fprintf(stderr, "usage: %s HOST PORT [--rate R] [--window W] [--sockets S] [--seconds T] "
                        "[--warmup W] [--timeout S] [--max N]\n", argv[0]);
        return 2;
    }
    rate = option(argc, argv, "--rate", 0);
    window = (long)option(argc, argv, "--window", 256);
    sockets = (long)option(argc, argv, "--sockets", 8);
    seconds = option(argc, argv, "--seconds", 5);
    warmup = option(argc, argv, "--warmup", 1);
    timeout = option(argc, argv, "--timeout", 1);
    max_requests = (long)option(argc, argv, "--max", 50e6);
    if (sockets < 1 || sockets > MAX_SOCKETS || window < 1 || rate < 0 || rate > 2e6 || seconds <= 0
        || seconds > 600 || warmup < 0 || warmup > 60 || timeout <= 0 || timeout > 10) {
        fprintf(stderr, "stun_load: an option is out of range\n");
        return 2;
    }
    outstanding_limit = rate > 0 ? RING / 2 : (uint64_t)window;
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) {
        fprintf(stderr, "stun_load: HOST must be an IPv4 address\n");
        return 2;
    }
    state = calloc(RING, 1);
    sent_at = calloc(RING, sizeof *sent_at);
    histogram = calloc(HISTOGRAM_US, sizeof *histogram);
    if (!state || !sent_at || !histogram)
        return 1;
    tag = (uint32_t)getpid() ^ (uint32_t)time(NULL);
    for (long i = 0; i < sockets; i++) {
        int size = 8 << 20;
        fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
        setsockopt(fds[i], SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&server, sizeof server) < 0) {
            perror("stun_load: socket");
            return 1;
        }
        polls[i].fd = fds[i];
        polls[i].events = POLLIN;
    }

    start = now_seconds();
    measure_from = start + warmup;
    stop_at = measure_from + seconds;
    for (;;) {
        double now = now_seconds();
        uint64_t owed;
        struct timespec wait = {0, TICK_NS};
        if (now >= stop_at || next_seq >= (uint64_t)max_requests)
            break;
        if (cpu_start < 0 && now >= measure_from)
            cpu_start = cpu_seconds();
        if (rate > 0) {
            uint64_t due = (uint64_t)((now - start) * rate) + 1;
            owed = due > next_seq ? due - next_seq : 0;
        } else {
            owed = pending < outstanding_limit ? outstanding_limit - pending : 0;
        }
        while (owed > 0 && next_seq < (uint64_t)max_requests) {
            int went = send_requests(fds[turn], owed > BATCH ? BATCH : (int)owed, now);
            turn = (turn + 1) % (int)sockets;
            if (went == 0)
                break;
            owed -= (uint64_t)went;
        }
        if (rate > 0 || pending >= outstanding_limit) {
            if (rate == 0)
                wait.tv_nsec = 1000000L;
            ppoll(polls, (nfds_t)sockets, &wait, NULL);
        }
        for (long i = 0; i < sockets; i++)
            receive_answers(fds[i]);
        expire(now_seconds(), 0);
    }
    measured = now_seconds() - measure_from;
    cpu = cpu_seconds() - (cpu_start < 0 ? cpu_seconds() : cpu_start);
    {
        double drain_until = now_seconds() + timeout;
        while (pending > 0 && now_seconds() < drain_until) {
            struct timespec wait = {0, 1000000L};
            ppoll(polls, (nfds_t)sockets, &wait, NULL);
            for (long i = 0; i < sockets; i++)
                receive_answers(fds[i]);
            expire(now_seconds(), 0);
        }
        expire(0, 1);
    }
    printf("sent=%llu answered=%llu lost=%llu late=%llu malformed=%llu send_errors=%llu seconds=%.3f "
           "p50_us=%.1f p99_us=%.1f cpu_percent=%.1f\n",
           (unsigned long long)sent, (unsigned long long)answered, (unsigned long long)lost,
           (unsigned long long)late, (unsigned long long)malformed, (unsigned long long)send_errors, measured,
           percentile(50), percentile(99), measured > 0 ? 100 * cpu / measured : 0);
    for (long i = 0; i < sockets; i++)
        close(fds[i]);
    return 0;
}
