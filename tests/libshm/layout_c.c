/* The segment layout as a C consumer would declare it from <tokenshm/layout.h>
 * alone: plain structs with explicit padding, each offset checked against the
 * header's constants at compile time, and exported as a table the C++ test
 * compares with the C++ structs the writer and reader use. Compiled as C11. */
#include "layout_c.h"

#include <tokenshm/layout.h>

#include <stddef.h>
#include <stdint.h>

struct c_header {
    uint64_t magic;
    uint16_t major;
    uint16_t minor;
    uint32_t header_size;
    uint32_t slot_count;
    uint32_t slot_size;
    uint32_t max_token_bytes;
    uint32_t record_size;
    uint64_t total_size;
    int64_t created_ms;
    uint8_t pad0[16];
    int64_t writer_pid;
    int64_t writer_start_ms;
    uint64_t writer_generation;
    uint32_t retired;
    uint8_t pad1[36];
    int64_t heartbeat_ms;
    char control_socket[TOKENSHM_CONTROL_SOCKET_CAP];
    uint8_t pad2[12];
};

struct c_slot_control {
    uint64_t seq;
    uint32_t futex;
    uint32_t status;
    uint8_t pad[48];
    char name[TOKENSHM_SLOT_NAME_CAP];
};

struct c_record_fixed {
    uint64_t version;
    int64_t expires_at_ms;
    int64_t issued_at_ms;
    int64_t next_refresh_ms;
    int64_t last_attempt_ms;
    uint32_t state;
    uint32_t failures;
    uint32_t token_len;
    uint16_t type_len;
    uint16_t scope_len;
    uint16_t error_len;
    uint16_t pad0;
    uint32_t pad1;
};

#define CHECK_AT(type, field, constant) \
    _Static_assert(offsetof(struct type, field) == (constant), #type "." #field)

CHECK_AT(c_header, magic, TOKENSHM_HDR_MAGIC);
CHECK_AT(c_header, major, TOKENSHM_HDR_MAJOR);
CHECK_AT(c_header, minor, TOKENSHM_HDR_MINOR);
CHECK_AT(c_header, header_size, TOKENSHM_HDR_HEADER_SIZE);
CHECK_AT(c_header, slot_count, TOKENSHM_HDR_SLOT_COUNT);
CHECK_AT(c_header, slot_size, TOKENSHM_HDR_SLOT_SIZE);
CHECK_AT(c_header, max_token_bytes, TOKENSHM_HDR_MAX_TOKEN_BYTES);
CHECK_AT(c_header, record_size, TOKENSHM_HDR_RECORD_SIZE);
CHECK_AT(c_header, total_size, TOKENSHM_HDR_TOTAL_SIZE);
CHECK_AT(c_header, created_ms, TOKENSHM_HDR_CREATED_MS);
CHECK_AT(c_header, writer_pid, TOKENSHM_HDR_WRITER_PID);
CHECK_AT(c_header, writer_start_ms, TOKENSHM_HDR_WRITER_START_MS);
CHECK_AT(c_header, writer_generation, TOKENSHM_HDR_WRITER_GENERATION);
CHECK_AT(c_header, retired, TOKENSHM_HDR_RETIRED);
CHECK_AT(c_header, heartbeat_ms, TOKENSHM_HDR_HEARTBEAT_MS);
CHECK_AT(c_header, control_socket, TOKENSHM_HDR_CONTROL_SOCKET);
_Static_assert(sizeof(struct c_header) == TOKENSHM_HEADER_SIZE, "c_header size");

CHECK_AT(c_slot_control, seq, TOKENSHM_SLOT_SEQ);
CHECK_AT(c_slot_control, futex, TOKENSHM_SLOT_FUTEX);
CHECK_AT(c_slot_control, status, TOKENSHM_SLOT_STATUS);
CHECK_AT(c_slot_control, name, TOKENSHM_SLOT_NAME);
_Static_assert(sizeof(struct c_slot_control) == TOKENSHM_SLOT_COPIES, "c_slot_control size");

CHECK_AT(c_record_fixed, version, TOKENSHM_REC_VERSION);
CHECK_AT(c_record_fixed, expires_at_ms, TOKENSHM_REC_EXPIRES_AT_MS);
CHECK_AT(c_record_fixed, issued_at_ms, TOKENSHM_REC_ISSUED_AT_MS);
CHECK_AT(c_record_fixed, next_refresh_ms, TOKENSHM_REC_NEXT_REFRESH_MS);
CHECK_AT(c_record_fixed, last_attempt_ms, TOKENSHM_REC_LAST_ATTEMPT_MS);
CHECK_AT(c_record_fixed, state, TOKENSHM_REC_STATE);
CHECK_AT(c_record_fixed, failures, TOKENSHM_REC_FAILURES);
CHECK_AT(c_record_fixed, token_len, TOKENSHM_REC_TOKEN_LEN);
CHECK_AT(c_record_fixed, type_len, TOKENSHM_REC_TYPE_LEN);
CHECK_AT(c_record_fixed, scope_len, TOKENSHM_REC_SCOPE_LEN);
CHECK_AT(c_record_fixed, error_len, TOKENSHM_REC_ERROR_LEN);
_Static_assert(sizeof(struct c_record_fixed) == TOKENSHM_REC_FIXED_SIZE, "c_record_fixed size");

#define ROW(type, field) \
    { #type "." #field, offsetof(struct type, field), sizeof(((struct type*)0)->field) }

const struct layout_c_field layout_c_fields[] = {
    ROW(c_header, magic),
    ROW(c_header, major),
    ROW(c_header, minor),
    ROW(c_header, header_size),
    ROW(c_header, slot_count),
    ROW(c_header, slot_size),
    ROW(c_header, max_token_bytes),
    ROW(c_header, record_size),
    ROW(c_header, total_size),
    ROW(c_header, created_ms),
    ROW(c_header, writer_pid),
    ROW(c_header, writer_start_ms),
    ROW(c_header, writer_generation),
    ROW(c_header, retired),
    ROW(c_header, heartbeat_ms),
    ROW(c_header, control_socket),
    ROW(c_slot_control, seq),
    ROW(c_slot_control, futex),
    ROW(c_slot_control, status),
    ROW(c_slot_control, name),
    ROW(c_record_fixed, version),
    ROW(c_record_fixed, expires_at_ms),
    ROW(c_record_fixed, issued_at_ms),
    ROW(c_record_fixed, next_refresh_ms),
    ROW(c_record_fixed, last_attempt_ms),
    ROW(c_record_fixed, state),
    ROW(c_record_fixed, failures),
    ROW(c_record_fixed, token_len),
    ROW(c_record_fixed, type_len),
    ROW(c_record_fixed, scope_len),
    ROW(c_record_fixed, error_len),
};
const size_t layout_c_field_count = sizeof layout_c_fields / sizeof layout_c_fields[0];

const size_t layout_c_header_size = sizeof(struct c_header);
const size_t layout_c_slot_control_size = sizeof(struct c_slot_control);
const size_t layout_c_record_fixed_size = sizeof(struct c_record_fixed);

/* The geometry as the header comment describes it, computed independently of
 * the C++ Geometry: a record is the fixed part plus the caps of every payload
 * field, rounded up to a cache line; a slot is its control block plus two
 * records; the segment is the header plus its slots. */
static uint64_t round_up(uint64_t n, uint64_t to) {
    return (n + to - 1) / to * to;
}

uint64_t layout_c_record_size(uint32_t max_token_bytes) {
    return round_up((uint64_t)TOKENSHM_REC_PAYLOAD + TOKENSHM_TYPE_CAP + TOKENSHM_SCOPE_CAP +
                        TOKENSHM_ERROR_CAP + max_token_bytes,
                    TOKENSHM_CACHE_LINE);
}
uint64_t layout_c_slot_size(uint32_t max_token_bytes) {
    return TOKENSHM_SLOT_COPIES + 2 * layout_c_record_size(max_token_bytes);
}
uint64_t layout_c_total_size(uint32_t max_token_bytes, uint32_t slot_count) {
    return TOKENSHM_HEADER_SIZE + (uint64_t)slot_count * layout_c_slot_size(max_token_bytes);
}
