/* tokenshm shared-segment layout, version 1.2 (minor 1 added TOKENSHM_HDR_RETIRED
 * and TOKENSHM_SLOT_RETIRED; a minor-0 reader sees a retired slot as absent.
 * Minor 2 added TOKENSHM_HDR_CONTROL_SOCKET; older segments hold zeros there,
 * which reads as "no control socket").
 *
 * These constants are the contract for every process and language that maps
 * the segment. All integers are little-endian, native to x86-64 and arm64.
 * Multi-byte fields marked (atomic) are written by the refresher with atomic
 * stores; readers load them with 8-byte (or 4-byte) atomic loads.
 *
 *   [ header: TOKENSHM_HEADER_SIZE bytes ]
 *   [ slot 0 ][ slot 1 ] ... [ slot slot_count-1 ]      each slot_size bytes
 *
 * A slot:
 *   [ control: 64 bytes: seq (atomic u64), futex (atomic u32), status (atomic u32) ]
 *   [ name: 64 bytes, NUL-padded ]
 *   [ record copy 0: record_size bytes ][ record copy 1: record_size bytes ]
 *
 * Readers read copy (seq & 1); see libshm/include/tokenshm/shm/latch.hpp.
 */
#ifndef TOKENSHM_LAYOUT_H
#define TOKENSHM_LAYOUT_H

#define TOKENSHM_MAGIC 0x314d48534e4b4f54ULL /* "TOKNSHM1" read as little-endian u64 */
#define TOKENSHM_MAJOR 1u
#define TOKENSHM_MINOR 2u
#define TOKENSHM_CACHE_LINE 64u

/* Header (all offsets in bytes from the start of the segment). */
#define TOKENSHM_HDR_MAGIC 0u              /* u64 */
#define TOKENSHM_HDR_MAJOR 8u              /* u16 */
#define TOKENSHM_HDR_MINOR 10u             /* u16 */
#define TOKENSHM_HDR_HEADER_SIZE 12u       /* u32 */
#define TOKENSHM_HDR_SLOT_COUNT 16u        /* u32 */
#define TOKENSHM_HDR_SLOT_SIZE 20u         /* u32 */
#define TOKENSHM_HDR_MAX_TOKEN_BYTES 24u   /* u32 */
#define TOKENSHM_HDR_RECORD_SIZE 28u       /* u32 */
#define TOKENSHM_HDR_TOTAL_SIZE 32u        /* u64 */
#define TOKENSHM_HDR_CREATED_MS 40u        /* i64, Unix ms */
#define TOKENSHM_HDR_WRITER_PID 64u        /* i64 (atomic) */
#define TOKENSHM_HDR_WRITER_START_MS 72u   /* i64 (atomic), Unix ms */
#define TOKENSHM_HDR_WRITER_GENERATION 80u /* u64 (atomic), +1 per writer attach */
/* u32 (atomic): 1 once the writer replaced this segment by a new one at the
 * same name (it was unlinked, truncated or replaced); readers reopen by name. */
#define TOKENSHM_HDR_RETIRED 88u
#define TOKENSHM_HDR_HEARTBEAT_MS 128u /* i64 (atomic), Unix ms, see TOKENSHM_HEARTBEAT_PERIOD_MS \
                                        */
/* char[TOKENSHM_CONTROL_SOCKET_CAP], NUL-padded: the refresher's control socket
 * (an absolute path), written by the writer when it attaches; empty when it
 * has none. Not atomic: readers read it only on their slow path (report_invalid,
 * `tokenshm refresh`) and validate it (NUL within the field). */
#define TOKENSHM_HDR_CONTROL_SOCKET 136u
#define TOKENSHM_CONTROL_SOCKET_CAP 108u /* sizeof(sockaddr_un.sun_path) */
#define TOKENSHM_HEADER_SIZE 256u

/* Slot control (offsets from the start of the slot). */
#define TOKENSHM_SLOT_SEQ 0u     /* u64 (atomic): publish counter; copy (seq & 1) is current */
#define TOKENSHM_SLOT_FUTEX 8u   /* u32 (atomic): +1 after every publish; FUTEX_WAIT on it */
#define TOKENSHM_SLOT_STATUS 12u /* u32 (atomic): 0 free, 1 active, 2 removed, 3 retired */
#define TOKENSHM_SLOT_NAME 64u   /* char[64], NUL-padded */
#define TOKENSHM_SLOT_NAME_CAP 64u
#define TOKENSHM_SLOT_COPIES 128u /* two records of record_size bytes each */

#define TOKENSHM_SLOT_FREE 0u
#define TOKENSHM_SLOT_ACTIVE 1u
#define TOKENSHM_SLOT_REMOVED 2u
/* The whole segment was retired (TOKENSHM_HDR_RETIRED): the credential lives
 * on in the new segment at the same name. */
#define TOKENSHM_SLOT_RETIRED 3u

/* Record (offsets from the start of one copy). */
#define TOKENSHM_REC_VERSION 0u          /* u64 */
#define TOKENSHM_REC_EXPIRES_AT_MS 8u    /* i64 */
#define TOKENSHM_REC_ISSUED_AT_MS 16u    /* i64 */
#define TOKENSHM_REC_NEXT_REFRESH_MS 24u /* i64 */
#define TOKENSHM_REC_LAST_ATTEMPT_MS 32u /* i64 */
#define TOKENSHM_REC_STATE 40u           /* u32, TOKENSHM_STATE_* */
#define TOKENSHM_REC_FAILURES 44u        /* u32, consecutive failures */
#define TOKENSHM_REC_TOKEN_LEN 48u       /* u32 */
#define TOKENSHM_REC_TYPE_LEN 52u        /* u16 */
#define TOKENSHM_REC_SCOPE_LEN 54u       /* u16 */
#define TOKENSHM_REC_ERROR_LEN 56u       /* u16 */
#define TOKENSHM_REC_PAYLOAD 64u /* token_type, scope, last_error, token: packed, in that order */
#define TOKENSHM_REC_FIXED_SIZE 64u

#define TOKENSHM_TYPE_CAP 32u    /* token_type bytes at most */
#define TOKENSHM_SCOPE_CAP 1024u /* scope bytes at most */
#define TOKENSHM_ERROR_CAP 240u  /* last_error bytes at most */

#define TOKENSHM_STATE_EMPTY 0u
#define TOKENSHM_STATE_VALID 1u
#define TOKENSHM_STATE_STALE 2u /* valid, but refreshes are failing */
#define TOKENSHM_STATE_EXPIRED 3u
#define TOKENSHM_STATE_REAUTH 4u /* the grant was rejected; a person must act */

/* Names: a segment name is [A-Za-z0-9._-]{1,TOKENSHM_SEGMENT_NAME_MAX}, a
 * credential name the same of at most TOKENSHM_SLOT_NAME_CAP - 1 bytes; neither
 * is "." or "..". */
#define TOKENSHM_SEGMENT_NAME_MAX 200u

/* Liveness: the refresher stores TOKENSHM_HDR_HEARTBEAT_MS every
 * TOKENSHM_HEARTBEAT_PERIOD_MS; a reader calls the writer alive while the
 * heartbeat is less than TOKENSHM_WRITER_ALIVE_WITHIN_MS old (and not that far
 * in the future either: a corrupt or foreign clock is not a live writer). */
#define TOKENSHM_HEARTBEAT_PERIOD_MS 250
#define TOKENSHM_WRITER_ALIVE_WITHIN_MS 3000

/* Bounds a reader enforces before trusting a header. */
#define TOKENSHM_MIN_TOKEN_BYTES 64u
#define TOKENSHM_MAX_TOKEN_BYTES_LIMIT (1u << 20)
#define TOKENSHM_MAX_SLOTS 4096u

#endif /* TOKENSHM_LAYOUT_H */
