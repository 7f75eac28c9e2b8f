/* The STUN Binding fast path (relay/_binding.c): plain C, no Python objects. */
#ifndef RELAY_BINDING_H
#define RELAY_BINDING_H

#include <stddef.h>
#include <sys/socket.h>

/* Room for one fast answer: header, two IPv6 address attributes, the tail, FINGERPRINT. */
#define BINDING_ANSWER_BYTES 1024

size_t binding_answer(const unsigned char *request, size_t size, const struct sockaddr_storage *source,
                      const unsigned char *tail, size_t tail_length, unsigned char *out, size_t capacity);

#endif
