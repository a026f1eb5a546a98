#pragma once
// The metadata of a Megatron-Core `torch_dist` checkpoint (PyTorch distributed checkpoint, DCP):
// the in-memory model, the `.metadata` pickle writer and its parser. docs/torch-dist-format.md
// describes every file of the format; this header holds the parts that are not data files.
//
// `.metadata` is `pickle.dump(Metadata, protocol=4)` of
//   torch.distributed.checkpoint.metadata.Metadata {
//     state_dict_metadata: {fqn: TensorStorageMetadata{properties, size, chunks} | BytesStorageMetadata()},
//     planner_data: None, storage_data: {MetadataIndex{fqn, index, offset}: _StorageInfo{relative_path,
//     offset, length}}, storage_meta: StorageMeta{checkpoint_id, save_id, load_id, modules}, version }
// Dataclasses pickle as NEWOBJ(cls, ()) + BUILD(__dict__); TensorProperties builds from its
// __getstate__ tuple (dtype, layout, requires_grad, memory-format enum, pin_memory, strides).
// The writer emits the same object graph as Python (field order included) but its own memo
// (only classes are memoized), so files are equal to torch's as objects, not as bytes.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/format/pickle_reader.hpp"

namespace ckbridge::format::torch_dist {

inline constexpr std::string_view kMetadataFile = ".metadata";
inline constexpr std::string_view kConfigFile = "metadata.json";
inline constexpr std::string_view kCommonFile = "common.pt";
// metadata.json as Megatron-Core's save_config writes it (json.dump of CheckpointingConfig).
inline constexpr std::string_view kConfigJson =
    R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch", "common_backend_version": 1})";

// One stored item: a chunk of a tensor (offsets/sizes in the global tensor) or a bytes object.
struct Chunk {
  Shape offsets, sizes;             // empty for bytes items
  std::string file;                 // relative path of the data file ("__0_1.distcp")
  std::uint64_t offset = 0, length = 0;  // byte range of the item's torch.save archive in `file`
  std::optional<std::int64_t> index;     // MetadataIndex.index hint (Megatron: position among
                                         // several local shards of one key, else None)
  friend bool operator==(const Chunk&, const Chunk&) = default;
};

struct Entry {
  std::string fqn;           // tensor key, or ShardedObject unique key "<key>/shard_<off>_<n>"
  bool bytes = false;        // BytesStorageMetadata
  DType dtype = DType::F32;  // tensors only
  Shape size;                // global shape
  std::optional<Shape> strides;  // TensorProperties.strides (Megatron: the first chunk's strides,
                                 // None for tensors with a prepended axis)
  std::vector<Chunk> chunks;     // bytes: exactly one, with empty offsets/sizes
  friend bool operator==(const Entry&, const Entry&) = default;
};

struct Metadata {
  std::vector<Entry> entries;   // state_dict_metadata order
  std::string checkpoint_id;    // StorageMeta.checkpoint_id (the save path as given; informational)
  std::string save_id;          // StorageMeta.save_id (a uuid4 string; informational)
  std::string version = "1.0.0";
  // TensorProperties pickled with the strides field (the 6-field state that recent torch writes:
  // torch 2.15 does, torch 2.11 cannot read it); false: the 5-field state every torch reads (strides
  // then read as None). Set by the parser from what the file holds.
  bool strides_field = false;

  const Entry* find(std::string_view fqn) const {
    for (const auto& e : entries)
      if (e.fqn == fqn) return &e;
    return nullptr;
  }
};

// ------------------------------------------------------------------------- pickle (protocol 4)
namespace detail {

class P4 {
public:
  std::vector<std::uint8_t> finish() {
    op('.');
    commit(true);
    return std::move(out_);
  }
  P4() {
    out_ = {0x80, 4};
  }

  void op(std::uint8_t c) { frame_.push_back(c); }
  void le(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) frame_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  // Python's framer: a frame is closed at an object boundary once it holds >= 64 KiB.
  void boundary() { commit(false); }

  void none() { op('N'); }
  void boolean(bool b) { op(b ? 0x88 : 0x89); }
  void integer(std::int64_t v) {
    if (v >= 0 && v < 256) { op('K'); le(static_cast<std::uint64_t>(v), 1); }
    else if (v >= 0 && v < 65536) { op('M'); le(static_cast<std::uint64_t>(v), 2); }
    else if (v >= INT32_MIN && v <= INT32_MAX) { op('J'); le(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)), 4); }
    else {  // LONG1, 8 bytes two's complement (minimal length is not required by the unpickler)
      op(0x8a);
      le(8, 1);
      le(static_cast<std::uint64_t>(v), 8);
    }
  }
  void str(std::string_view s) {
    if (s.size() < 256) { op(0x8c); le(s.size(), 1); }
    else if (s.size() <= 0xFFFFFFFFu) { op('X'); le(s.size(), 4); }
    else { op(0x8d); le(s.size(), 8); }
    frame_.insert(frame_.end(), s.begin(), s.end());
  }
  // A class or function reference; memoized so each appears once in the stream.
  void global(const std::string& module, const std::string& name) {
    const std::string key = module + "\n" + name;
    if (auto it = memo_.find(key); it != memo_.end()) {
      const std::uint32_t i = it->second;
      if (i < 256) { op('h'); le(i, 1); }
      else { op('j'); le(i, 4); }
      return;
    }
    str(module);
    str(name);
    op(0x93);  // STACK_GLOBAL
    op(0x94);  // MEMOIZE
    memo_.emplace(key, next_++);
  }
  void int_tuple(const Shape& s) {
    if (s.empty()) { op(')'); return; }
    if (s.size() <= 3) {
      for (auto v : s) integer(v);
      op(static_cast<std::uint8_t>(0x84 + s.size()));  // TUPLE1..3
      return;
    }
    op('(');
    for (auto v : s) integer(v);
    op('t');
  }
  void torch_size(const Shape& s) {  // torch.Size((d0, d1, ...))
    global("torch", "Size");
    int_tuple(s);
    op(0x85);  // TUPLE1
    op('R');
  }
  void new_object(const std::string& module, const std::string& name) {  // cls.__new__(cls)
    global(module, name);
    op(')');
    op(0x81);  // NEWOBJ
  }

private:
  void commit(bool last) {
    if (frame_.empty() || (!last && frame_.size() < 65536)) return;
    out_.push_back(0x95);  // FRAME
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<std::uint8_t>(static_cast<std::uint64_t>(frame_.size()) >> (8 * i)));
    out_.insert(out_.end(), frame_.begin(), frame_.end());
    frame_.clear();
  }
  std::vector<std::uint8_t> out_, frame_;
  std::unordered_map<std::string, std::uint32_t> memo_;
  std::uint32_t next_ = 0;
};

inline constexpr const char* kMeta = "torch.distributed.checkpoint.metadata";
inline constexpr const char* kFs = "torch.distributed.checkpoint.filesystem";

inline void tensor_properties(P4& p, DType dt, const std::optional<Shape>& strides, bool strides_field) {
  p.new_object(kMeta, "TensorProperties");
  p.op('(');
  p.global("torch", std::string(torch_dtype_name(dt)));
  p.global("torch.serialization", "_get_layout");  // layout: _get_layout("torch.strided")
  p.str("torch.strided");
  p.op(0x85);
  p.op('R');
  p.boolean(false);                                // requires_grad
  p.global(kMeta, "_MEM_FORMAT_ENCODING");         // _MEM_FORMAT_ENCODING(0): contiguous
  p.integer(0);
  p.op(0x85);
  p.op('R');
  p.boolean(false);                                // pin_memory
  if (strides_field) {
    if (strides) p.int_tuple(*strides);
    else p.none();
  }
  p.op('t');
  p.op('b');
}

inline void metadata_index(P4& p, const std::string& fqn, const Chunk& c, bool bytes) {
  p.new_object(kMeta, "MetadataIndex");
  p.op('}');
  p.op('(');
  p.str("fqn");
  p.str(fqn);
  p.str("index");
  if (c.index) p.integer(*c.index);
  else p.none();
  if (!bytes) {
    p.str("offset");
    p.torch_size(c.offsets);
  }
  p.op('u');
  p.op('b');
}

inline void storage_info(P4& p, const Chunk& c) {
  p.new_object(kFs, "_StorageInfo");
  p.op('}');
  p.op('(');
  p.str("relative_path");
  p.str(c.file);
  p.str("offset");
  p.integer(static_cast<std::int64_t>(c.offset));
  p.str("length");
  p.integer(static_cast<std::int64_t>(c.length));
  p.op('u');
  p.op('b');
}

}  // namespace detail

// Checks what the format needs: unique keys, chunks inside the global shape, one chunk for bytes.
inline void validate(const Metadata& m, std::string_view what) {
  std::unordered_map<std::string_view, int> seen;
  for (const auto& e : m.entries) {
    if (!seen.emplace(e.fqn, 0).second) fail(what, ": key '", e.fqn, "' appears twice");
    if (e.bytes) {
      if (e.chunks.size() != 1) fail(what, ": bytes item '", e.fqn, "' must have exactly one storage entry");
      continue;
    }
    if (e.chunks.empty()) fail(what, ": tensor '", e.fqn, "' has no chunks");
    for (const auto& c : e.chunks) {
      if (c.offsets.size() != e.size.size() || c.sizes.size() != e.size.size())
        fail(what, ": tensor '", e.fqn, "' ", shape_str(e.size), ": chunk at ", shape_str(c.offsets), " of ",
             shape_str(c.sizes), " has the wrong rank");
      for (std::size_t d = 0; d < e.size.size(); ++d)
        if (c.offsets[d] < 0 || c.sizes[d] < 0 || c.offsets[d] > e.size[d] || c.sizes[d] > e.size[d] - c.offsets[d])
          fail(what, ": tensor '", e.fqn, "' ", shape_str(e.size), ": chunk at ", shape_str(c.offsets), " of ",
               shape_str(c.sizes), " lies outside the tensor");
    }
  }
}

// `.metadata` bytes for `m`: state_dict_metadata and storage_data in entry/chunk order.
inline std::vector<std::uint8_t> pickle_metadata(const Metadata& m) {
  validate(m, ".metadata");
  using namespace detail;
  P4 p;
  p.new_object(kMeta, "Metadata");
  p.op('}');
  p.op('(');
  p.str("state_dict_metadata");
  p.op('}');
  p.op('(');
  std::size_t n = 0;
  auto batch = [&] {  // SETITEMS in batches of 1000, like CPython
    if (++n % 1000 == 0) {
      p.op('u');
      p.op('(');
    }
  };
  for (const auto& e : m.entries) {
    p.boundary();
    p.str(e.fqn);
    if (e.bytes) {
      p.new_object(kMeta, "BytesStorageMetadata");
    } else {
      p.new_object(kMeta, "TensorStorageMetadata");
      p.op('}');
      p.op('(');
      p.str("properties");
      tensor_properties(p, e.dtype, e.strides, m.strides_field);
      p.str("size");
      p.torch_size(e.size);
      p.str("chunks");
      p.op(']');
      p.op('(');
      for (const auto& c : e.chunks) {
        p.new_object(kMeta, "ChunkStorageMetadata");
        p.op('}');
        p.op('(');
        p.str("offsets");
        p.torch_size(c.offsets);
        p.str("sizes");
        p.torch_size(c.sizes);
        p.op('u');
        p.op('b');
      }
      p.op('e');  // APPENDS
      p.op('u');
      p.op('b');
    }
    batch();
  }
  p.op('u');
  p.str("planner_data");
  p.none();
  p.str("storage_data");
  p.op('}');
  p.op('(');
  n = 0;
  for (const auto& e : m.entries)
    for (const auto& c : e.chunks) {
      p.boundary();
      metadata_index(p, e.fqn, c, e.bytes);
      storage_info(p, c);
      batch();
    }
  p.op('u');
  p.str("storage_meta");
  p.new_object(kMeta, "StorageMeta");
  p.op('}');
  p.op('(');
  p.str("checkpoint_id");
  p.str(m.checkpoint_id);
  p.str("save_id");
  p.str(m.save_id);
  p.str("load_id");
  p.none();
  p.str("modules");
  p.op(']');
  p.op('u');
  p.op('b');
  p.str("version");
  p.str(m.version);
  p.op('u');
  p.op('b');
  return p.finish();
}

// ------------------------------------------------------------------------------------ parser
namespace detail {

inline const pickle::Object& state_of(const pickle::ObjectPtr& o, std::string_view cls, std::string_view what) {
  if (!o || !o->is(pickle::Kind::NewObj) || !o->callable || o->callable->name != cls)
    fail(what, ": expected a ", cls, " object, found ", o ? pickle::describe(*o) : std::string("nothing"));
  if (!o->state) fail(what, ": ", cls, " object has no state");
  return *o->state;
}
inline pickle::ObjectPtr field(const pickle::Object& st, std::string_view key, std::string_view what, bool required = true) {
  pickle::ObjectPtr v = st.get(key);
  if (!v && required) fail(what, ": no field '", key, "'");
  return v;
}
inline Shape as_shape(const pickle::ObjectPtr& o, std::string_view what) {
  const pickle::Object* t = o.get();
  // torch.Size is read as a Tuple by the unpickler (it interprets torch.Size)
  if (!t || !(t->is(pickle::Kind::Tuple) || t->is(pickle::Kind::List)))
    fail(what, ": expected a torch.Size, found ", o ? pickle::describe(*o) : std::string("nothing"));
  Shape s;
  for (const auto& x : t->items) s.push_back(x->as_int(what));
  return s;
}
inline std::uint64_t as_u64(const pickle::ObjectPtr& o, std::string_view what) {
  const std::int64_t v = o->as_int(what);
  if (v < 0) fail(what, ": negative value ", v);
  return static_cast<std::uint64_t>(v);
}

}  // namespace detail

// Parses `.metadata` bytes. `source` names the file in errors.
inline Metadata parse_metadata(std::span<const std::byte> bytes, const std::string& source) {
  using namespace detail;
  const pickle::ObjectPtr root = pickle::loads(bytes, source);
  const pickle::Object& st = state_of(root, "Metadata", source);
  Metadata m;
  const pickle::ObjectPtr sdm = field(st, "state_dict_metadata", source);
  if (!sdm->is(pickle::Kind::Dict)) fail(source, ": state_dict_metadata is not a dict");
  std::unordered_map<std::string, std::size_t> pos;
  for (const auto& [k, v] : sdm->dict) {
    Entry e;
    e.fqn = k->as_str(source + ": state_dict_metadata key");
    const std::string what = source + ": '" + e.fqn + "'";
    if (v && v->is(pickle::Kind::NewObj) && v->callable && v->callable->name == "BytesStorageMetadata") {
      e.bytes = true;
    } else {
      const pickle::Object& ts = state_of(v, "TensorStorageMetadata", what);
      const pickle::ObjectPtr props = field(ts, "properties", what);
      if (!props->is(pickle::Kind::NewObj) || !props->state || !props->state->is(pickle::Kind::Tuple) ||
          props->state->items.size() < 5)
        fail(what, ": TensorProperties has an unexpected state ", pickle::describe(*props));
      const pickle::ObjectPtr& dt = props->state->items[0];
      if (!dt->is(pickle::Kind::Global) || dt->s != "torch")
        fail(what, ": dtype is not a torch dtype: ", pickle::describe(*dt));
      const auto d = dtype_from_torch_dtype(dt->name);
      if (!d) fail(what, ": dtype torch.", dt->name, " is not supported by ckbridge");
      e.dtype = *d;
      if (props->state->items.size() >= 6) m.strides_field = true;
      if (props->state->items.size() >= 6 && !props->state->items[5]->is_none())
        e.strides = as_shape(props->state->items[5], what + " strides");
      e.size = as_shape(field(ts, "size", what), what + " size");
      const pickle::ObjectPtr chunks = field(ts, "chunks", what);
      if (!chunks->is(pickle::Kind::List)) fail(what, ": chunks is not a list");
      for (const auto& c : chunks->items) {
        const pickle::Object& cs = state_of(c, "ChunkStorageMetadata", what);
        Chunk ch;
        ch.offsets = as_shape(field(cs, "offsets", what), what + " chunk offsets");
        ch.sizes = as_shape(field(cs, "sizes", what), what + " chunk sizes");
        e.chunks.push_back(std::move(ch));
      }
    }
    pos.emplace(e.fqn, m.entries.size());
    m.entries.push_back(std::move(e));
  }
  const pickle::ObjectPtr sd = field(st, "storage_data", source);
  if (!sd->is(pickle::Kind::Dict)) fail(source, ": storage_data is not a dict (not a FileSystemWriter checkpoint?)");
  for (const auto& [k, v] : sd->dict) {
    const pickle::Object& ks = state_of(k, "MetadataIndex", source + ": storage_data key");
    const std::string fqn = field(ks, "fqn", source + ": MetadataIndex")->as_str("MetadataIndex.fqn");
    const std::string what = source + ": storage of '" + fqn + "'";
    auto it = pos.find(fqn);
    if (it == pos.end()) fail(what, ": key not in state_dict_metadata");
    Entry& e = m.entries[it->second];
    const pickle::Object& vs = state_of(v, "_StorageInfo", what);
    if (pickle::ObjectPtr td = vs.get("transform_descriptors"); td && !td->is_none() && !(td->is(pickle::Kind::List) && td->items.empty()) &&
                                                                 !(td->is(pickle::Kind::Tuple) && td->items.empty()))
      fail(what, ": stored with transforms ", pickle::describe(*td), " (compression/encryption extensions are not supported)");
    Chunk* ch = nullptr;
    if (e.bytes) {
      if (e.chunks.empty()) e.chunks.emplace_back();
      ch = &e.chunks.front();
    } else {
      const pickle::ObjectPtr off = ks.get("offset");
      if (!off || off->is_none()) fail(what, ": tensor storage without an offset");
      const Shape o = as_shape(off, what);
      for (auto& c : e.chunks)
        if (c.offsets == o) ch = &c;
      if (!ch) fail(what, ": no chunk at offset ", shape_str(o), " in state_dict_metadata");
    }
    if (!ch->file.empty()) fail(what, ": stored twice");
    if (pickle::ObjectPtr ix = ks.get("index"); ix && !ix->is_none()) ch->index = ix->as_int("MetadataIndex.index");
    ch->file = field(vs, "relative_path", what)->as_str("relative_path");
    ch->offset = as_u64(field(vs, "offset", what), "offset");
    ch->length = as_u64(field(vs, "length", what), "length");
  }
  for (const auto& e : m.entries) {
    if (e.bytes && e.chunks.empty()) fail(source, ": bytes item '", e.fqn, "' has no storage entry");
    for (const auto& c : e.chunks)
      if (c.file.empty())
        fail(source, ": chunk ", shape_str(c.offsets), " of '", e.fqn, "' has no storage entry (storage_data)");
  }
  if (pickle::ObjectPtr sm = st.get("storage_meta"); sm && !sm->is_none() && sm->state) {
    if (auto c = sm->state->get("checkpoint_id"); c && c->is(pickle::Kind::Str)) m.checkpoint_id = c->s;
    if (auto s = sm->state->get("save_id"); s && s->is(pickle::Kind::Str)) m.save_id = s->s;
  }
  if (pickle::ObjectPtr v = st.get("version"); v && v->is(pickle::Kind::Str)) m.version = v->s;
  validate(m, source);
  return m;
}

}  // namespace ckbridge::format::torch_dist
