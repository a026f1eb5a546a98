#pragma once
// All layout policies and the algorithms over them.
#include "ckbridge/layout/any_policy.hpp"
#include "ckbridge/layout/apply.hpp"
#include "ckbridge/layout/compose.hpp"
#include "ckbridge/layout/expert_slice.hpp"
#include "ckbridge/layout/fp8_split.hpp"
#include "ckbridge/layout/grouped_qkv.hpp"
#include "ckbridge/layout/policy.hpp"
#include "ckbridge/layout/replicated.hpp"
#include "ckbridge/layout/shard_map.hpp"
#include "ckbridge/layout/split_dim.hpp"
#include "ckbridge/layout/swiglu.hpp"
#include "ckbridge/layout/vocab_pad.hpp"
