/* Big-endian reads of STUN header and attribute fields (RFC 8489 §5, §14) and FINGERPRINT's CRC-32
 * (§14.7), shared by the C fast paths (relay/_binding.c, relay/_requests.c, relay/_sendwalk.h). */
#ifndef RELAY_STUN_BYTES_H
#define RELAY_STUN_BYTES_H

#include <stddef.h>
#include <stdint.h>

static inline uint16_t
get16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t
get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* CRC-32 (ISO-HDLC, as zlib.crc32). Each file that includes this has its own table, filled on first use. */
static uint32_t crc_table[256];
static int crc_table_ready;

/* crc continued over p[0:n]: start from 0xFFFFFFFF, finish with ^ 0xFFFFFFFF (as crc32_of does). */
static inline uint32_t
crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
    if (!crc_table_ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
        crc_table_ready = 1;
    }
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return crc;
}

/* CRC-32 of p[0:n]. */
static inline uint32_t
crc32_of(const unsigned char *p, size_t n)
{
    return crc32_update(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
}

#endif
