"""Pure domain logic: ids, the hash ring, validation rules, records. No I/O, no clocks
read implicitly (callers pass time in), no imports from other chatd layers but errors."""
