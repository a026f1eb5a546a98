// tr_dump: prints what ckbridge's torch.save / Megatron readers see, as JSON, so the python
// cross-check (tests/python/test_torch_read_interop.py) can compare it with torch.load.
//   tr_dump file <model.pt>        whole object tree; tensors with their bytes in logical order
//   tr_dump megatron <ckpt dir>    directory summary + every rank file's args/models
//   tr_dump zip <file.pt>          record table (name, offset, size, crc) with CRCs verified
// Exit status 0 on success, 1 with "error: <message>" on stderr for a ckbridge::Error.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "ckbridge/format/megatron_reader.hpp"

using namespace ckbridge;
using namespace ckbridge::format;
namespace pk = ckbridge::pickle;

namespace {

void json_str(std::string& o, std::string_view s) {
  o += '"';
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') { o += '\\'; o += static_cast<char>(c); }
    else if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b; }
    else o += static_cast<char>(c);
  }
  o += '"';
}
void hex(std::string& o, const std::byte* p, std::size_t n) {
  static const char* h = "0123456789abcdef";
  for (std::size_t k = 0; k < n; ++k) {
    const auto b = std::to_integer<unsigned>(p[k]);
    o += h[b >> 4];
    o += h[b & 15];
  }
}
void num(std::string& o, double d) {
  if (std::isnan(d)) { o += "\"nan\""; return; }
  if (std::isinf(d)) { o += d > 0 ? "\"inf\"" : "\"-inf\""; return; }
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", d);
  o += b;
  if (!std::strpbrk(b, ".en")) o += ".0";  // keep it a float in JSON
}
void ints(std::string& o, const Shape& s) {
  o += '[';
  for (std::size_t k = 0; k < s.size(); ++k) { if (k) o += ','; o += std::to_string(s[k]); }
  o += ']';
}

// Elements of a strided view, in row-major logical order, as raw bytes.
void tensor_bytes(std::string& o, const AnyConstView& v) {
  const std::size_t es = v.element_size();
  if (v.numel() == 0) return;
  std::vector<std::int64_t> idx(v.rank(), 0);
  while (true) {
    std::int64_t off = 0;
    for (std::size_t d = 0; d < v.rank(); ++d) off += idx[d] * v.strides[d];
    hex(o, v.data + off * static_cast<std::int64_t>(es), es);
    std::size_t d = v.rank();
    while (d > 0) {
      if (++idx[d - 1] < v.shape[d - 1]) break;
      idx[d - 1] = 0;
      --d;
    }
    if (d == 0) break;
  }
}

void tensor_json(std::string& o, const TorchFile& f, const pk::TensorRef& t) {
  o += "{\"__tensor__\":{\"dtype\":";
  json_str(o, t.dtype_name);
  o += ",\"shape\":";
  ints(o, t.shape);
  o += ",\"stride\":";
  ints(o, t.strides);
  o += ",\"offset\":" + std::to_string(t.storage_offset) + ",\"key\":";
  json_str(o, t.storage.key);
  o += ",\"hex\":\"";
  tensor_bytes(o, f.view(t, "tensor"));
  o += "\"}}";
}

void obj_json(std::string& o, const TorchFile& f, const pk::Object& x) {
  using K = pk::Kind;
  switch (x.kind) {
    case K::None: o += "null"; return;
    case K::Bool: o += x.b ? "true" : "false"; return;
    case K::Int: o += std::to_string(x.i); return;
    case K::BigInt: o += "{\"__bigint__\":"; json_str(o, x.s); o += '}'; return;
    case K::Float: num(o, x.f); return;
    case K::Str: json_str(o, x.s); return;
    case K::Bytes: o += "{\"__bytes__\":\""; hex(o, reinterpret_cast<const std::byte*>(x.s.data()), x.s.size()); o += "\"}"; return;
    case K::List: case K::Tuple: case K::Set: {
      o += x.kind == K::List ? "[" : x.kind == K::Tuple ? "{\"__tuple__\":[" : "{\"__set__\":[";
      for (std::size_t k = 0; k < x.items.size(); ++k) { if (k) o += ','; obj_json(o, f, *x.items[k]); }
      o += x.kind == K::List ? "]" : "]}";
      return;
    }
    case K::Dict: case K::Namespace: {
      o += x.kind == K::Dict ? "{\"__dict__\":[" : "{\"__namespace__\":[";
      for (std::size_t k = 0; k < x.dict.size(); ++k) {
        if (k) o += ',';
        o += '[';
        obj_json(o, f, *x.dict[k].first);
        o += ',';
        obj_json(o, f, *x.dict[k].second);
        o += ']';
      }
      o += "],\"__class__\":";
      json_str(o, x.name);
      o += '}';
      return;
    }
    case K::Global: o += "{\"__global__\":"; json_str(o, x.qualified_name()); o += '}'; return;
    case K::Tensor: tensor_json(o, f, *x.tensor); return;
    case K::Storage: o += "{\"__storage__\":"; json_str(o, x.storage->key); o += '}'; return;
    case K::Call: case K::NewObj:
      o += x.kind == K::Call ? "{\"__call__\":" : "{\"__newobj__\":";
      obj_json(o, f, *x.callable);
      o += ",\"args\":";
      obj_json(o, f, *x.args);
      o += ",\"state\":";
      if (x.state) obj_json(o, f, *x.state); else o += "null";
      o += '}';
      return;
  }
}

void opt_tensor(std::string& o, const MegatronRankFile& rf, const std::optional<pk::TensorRef>& t) {
  if (!t) { o += "null"; return; }
  tensor_json(o, *rf.file, *t);
}

void fp8_json(std::string& o, const MegatronRankFile& rf, const TeFp8BlockwiseRef& r) {
  o += "{\"shape\":";
  ints(o, r.shape);
  o += ",\"fp8_dtype\":";
  json_str(o, safetensors_name(r.fp8_dtype));
  o += ",\"te_dtype_code\":" + std::to_string(r.te_dtype_code);
  o += ",\"ambiguous\":" + std::string(r.dtype_code_ambiguous ? "true" : "false");
  o += ",\"fake_dtype\":";
  if (r.fake_dtype) json_str(o, torch_dtype_name(*r.fake_dtype)); else o += "null";
  o += ",\"num_args\":" + std::to_string(r.num_args);
  o += ",\"module_level\":" + std::string(r.module_level_rebuild ? "true" : "false");
  o += ",\"data_format\":" + (r.data_format ? std::to_string(*r.data_format) : std::string("null"));
  o += ",\"is_2d\":" + std::string(r.is_2d_scaled ? "true" : "false");
  const auto& q = r.quantizer;
  auto ob = [&](const char* k, const std::optional<bool>& v) {
    o += ",\"" + std::string(k) + "\":" + (v ? (*v ? "true" : "false") : "null");
  };
  o += ",\"quantizer\":{\"class\":";
  json_str(o, q.class_name);
  ob("rowwise_usage", q.rowwise_usage);
  ob("columnwise_usage", q.columnwise_usage);
  ob("internal", q.internal);
  ob("force_pow_2_scales", q.force_pow_2_scales);
  ob("all_gather_usage", q.all_gather_usage);
  ob("optimize_for_gemm", q.optimize_for_gemm);
  o += ",\"block_len\":" + (q.block_len ? std::to_string(*q.block_len) : std::string("null"));
  o += ",\"block_scaling_dim\":" + (q.block_scaling_dim ? std::to_string(*q.block_scaling_dim) : std::string("null"));
  o += ",\"dtype_code\":" + (q.te_dtype_code ? std::to_string(*q.te_dtype_code) : std::string("null"));
  o += ",\"amax_epsilon\":";
  if (q.amax_epsilon) num(o, *q.amax_epsilon); else o += "null";
  o += "},\"data\":";
  opt_tensor(o, rf, r.rowwise_data);
  o += ",\"scale_inv\":";
  opt_tensor(o, rf, r.rowwise_scale_inv);
  o += '}';
}

std::string dump_megatron(const std::string& dir) {
  auto c = open_megatron_checkpoint(dir);
  // Two-number names: let the args of the first rank decide.
  {
    auto first = load_megatron_rank_file(c.ranks.front().model_file());
    resolve_rank_axes(c, first);
  }
  std::string o = "{\"release\":" + std::string(c.release ? "true" : "false");
  o += ",\"iteration\":" + std::to_string(c.iteration) + ",\"ranks\":[";
  for (std::size_t k = 0; k < c.ranks.size(); ++k) {
    const auto& r = c.ranks[k];
    if (k) o += ',';
    auto rf = load_megatron_rank_file(r.model_file());
    o += "{\"name\":";
    json_str(o, r.name);
    o += ",\"tp\":" + std::to_string(r.tp) + ",\"pp\":" + std::to_string(r.pp) + ",\"ep\":" + std::to_string(r.ep);
    o += ",\"checkpoint_version\":";
    if (rf.checkpoint_version) num(o, *rf.checkpoint_version); else o += "null";
    o += ",\"iteration\":" + (rf.iteration ? std::to_string(*rf.iteration) : std::string("null"));
    o += ",\"args\":{";
    bool first = true;
    for (const auto& [name, v] : rf.args) {
      if (!first) o += ',';
      first = false;
      json_str(o, name);
      o += ':';
      obj_json(o, *rf.file, *v);
    }
    o += "},\"models\":{";
    for (std::size_t m = 0; m < rf.models.size(); ++m) {
      if (m) o += ',';
      json_str(o, rf.models[m].key);
      o += ":[";
      for (std::size_t e = 0; e < rf.models[m].entries.size(); ++e) {
        const auto& en = rf.models[m].entries[e];
        if (e) o += ',';
        o += "{\"name\":";
        json_str(o, en.name);
        static const char* kinds[] = {"tensor", "te_fp8", "extra_state", "none", "other"};
        o += ",\"kind\":\"" + std::string(kinds[static_cast<int>(en.kind)]) + "\",\"value\":";
        if (en.kind == ModelEntry::Kind::TeFp8Blockwise) fp8_json(o, rf, *en.fp8);
        else obj_json(o, *rf.file, *en.object);
        o += '}';
      }
      o += ']';
    }
    o += "}}";
  }
  o += "]}";
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: tr_dump file|megatron|zip <path>\n";
    return 2;
  }
  const std::string mode = argv[1], path = argv[2];
  try {
    std::string out;
    if (mode == "file") {
      TorchFile f(path);
      obj_json(out, f, *f.root());
    } else if (mode == "megatron") {
      out = dump_megatron(path);
    } else if (mode == "zip") {
      TorchZipReader z(path, ZipReadOptions{.verify_crc = true});
      out = "{\"prefix\":";
      json_str(out, z.prefix());
      out += ",\"version\":" + std::to_string(z.format_version()) + ",\"records\":[";
      for (std::size_t k = 0; k < z.records().size(); ++k) {
        const auto& r = z.records()[k];
        if (k) out += ',';
        out += "{\"name\":";
        json_str(out, r.name);
        out += ",\"data_offset\":" + std::to_string(r.data_offset) + ",\"size\":" + std::to_string(r.size) +
               ",\"crc\":" + std::to_string(r.crc32) + "}";
      }
      out += "]}";
    } else {
      std::cerr << "unknown mode " << mode << "\n";
      return 2;
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fputc('\n', stdout);
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
