/* What layout_c.c (compiled as C) exports to layout_test.cpp. */
#ifndef TOKENSHM_TESTS_LAYOUT_C_H
#define TOKENSHM_TESTS_LAYOUT_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct layout_c_field {
    const char* name; /* "c_header.magic" */
    size_t offset;
    size_t size;
};

extern const struct layout_c_field layout_c_fields[];
extern const size_t layout_c_field_count;
extern const size_t layout_c_header_size;
extern const size_t layout_c_slot_control_size;
extern const size_t layout_c_record_fixed_size;

uint64_t layout_c_record_size(uint32_t max_token_bytes);
uint64_t layout_c_slot_size(uint32_t max_token_bytes);
uint64_t layout_c_total_size(uint32_t max_token_bytes, uint32_t slot_count);

#ifdef __cplusplus
}
#endif

#endif /* TOKENSHM_TESTS_LAYOUT_C_H */
