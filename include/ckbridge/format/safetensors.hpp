#pragma once
// safetensors, read and write (namespace ckbridge::safetensors):
//  - File        one mapped, validated .safetensors file; zero-copy views      (safetensors_file.hpp)
//  - Checkpoint  a HF model directory, with or without the sharded index       (safetensors_checkpoint.hpp)
//  - FileWriter  byte-identical to Python safetensors; parallel piecewise writes (safetensors_writer.hpp)
//  - plan_shards / write_index   HF sharding and model.safetensors.index.json  (safetensors_writer.hpp)
//  - parse_header / plan_layout  the header alone (no I/O; used by the fuzzer)   (safetensors_header.hpp)
#include "ckbridge/format/safetensors_checkpoint.hpp"
#include "ckbridge/format/safetensors_file.hpp"
#include "ckbridge/format/safetensors_header.hpp"
#include "ckbridge/format/safetensors_writer.hpp"
