#pragma once
// Reading side of Megatron-LM legacy `torch` checkpoints (file-formats.md §3):
//   <dir>/latest_checkpointed_iteration.txt  -> "release" or an iteration number
//   <dir>/release/ | <dir>/iter_%07d/  mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt
// plus TorchFile, a torch.load without torch: zip index + safe unpickle + zero-copy tensor views.
#include <atomic>
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <span>
#include <system_error>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/format/pickle_reader.hpp"
#include "ckbridge/format/te_fp8_reader.hpp"
#include "ckbridge/format/torch_zip_reader.hpp"

namespace ckbridge::format {

// One torch.save file, opened read-only. Views stay valid while the TorchFile lives.
class TorchFile {
public:
  explicit TorchFile(const std::filesystem::path& path, ZipReadOptions zopts = {}, pickle::Limits limits = {})
      : zip_(std::make_unique<TorchZipReader>(path, zopts)) {
    parse(limits, zopts);
  }
  // Non-owning over an in-memory archive (nested archives, tests, fuzzing).
  TorchFile(std::span<const std::byte> bytes, std::string name, ZipReadOptions zopts = {}, pickle::Limits limits = {})
      : zip_(std::make_unique<TorchZipReader>(bytes, std::move(name), zopts)) {
    parse(limits, zopts);
  }

  const TorchZipReader& zip() const { return *zip_; }
  const std::string& file_name() const { return zip_->file_name(); }
  const pickle::ObjectPtr& root() const { return root_; }

  // Bytes of the storage behind a tensor; checks the record holds exactly what the pickle says,
  // and (`verify`, with ZipReadOptions::verify_crc_on_read) its CRC the first time it is taken.
  // Planners pass verify = false and call verify_storage() when the bytes are really read, so a
  // plan reads no tensor data.
  std::span<const std::byte> storage_bytes(const pickle::StorageRef& s, bool verify = true) const {
    const ZipRecord& r = storage_record(s);
    if (verify) checked(r);
    return zip_->bytes(r);
  }
  // CRC-checks the record of a storage (once; thread-safe). No-op without verify_crc_on_read.
  void verify_storage(const pickle::StorageRef& s) const { checked(storage_record(s)); }
  // Zero-copy strided view of a tensor. `what` names the tensor in errors.
  AnyConstView view(const pickle::TensorRef& t, std::string_view what = "tensor", bool verify = true) const {
    if (!t.dtype) fail(file_name(), ": ", what, " has dtype torch.", t.dtype_name, ", which ckbridge does not support");
    auto bytes = storage_bytes(t.storage, verify);
    const std::size_t es = dtype_size(*t.dtype);
    // Bounds were checked against the declared storage size when unpickling; the record size matches it.
    const std::byte* p = bytes.data() + static_cast<std::size_t>(t.storage_offset) * es;
    if (reinterpret_cast<std::uintptr_t>(p) % es != 0)
      fail(file_name(), ": ", what, " data at record '", t.storage.key, "' is not aligned to ", es,
           " bytes; copy it through storage_bytes()");
    return AnyConstView(p, *t.dtype, t.shape, t.strides);
  }

  // Zero-copy views of a TE blockwise FP8 tensor's rowwise data (uint8 [M, N]) and scale_inv
  // (float32, padded columns included).
  struct TeFp8Views {
    AnyConstView data, scale_inv;
  };
  TeFp8Views te_fp8_views(const TeFp8BlockwiseRef& r, std::string_view what = "tensor", bool verify = true) const {
    if (!r.rowwise_data || !r.rowwise_scale_inv)
      fail(file_name(), ": ", what, ": TE FP8 tensor has no rowwise data/scale_inv (columnwise-only is not supported)");
    return {view(*r.rowwise_data, what, verify), view(*r.rowwise_scale_inv, what, verify)};
  }

private:
  const ZipRecord& storage_record(const pickle::StorageRef& s) const {
    const ZipRecord* r = zip_->find("data/" + s.key);
    if (!r) fail(file_name(), ": storage '", s.key, "' has no record '", zip_->prefix(), "/data/", s.key, "'");
    if (r->size != s.nbytes())
      fail(file_name(), ": record '", r->name, "' holds ", r->size, " bytes but the pickle declares ", s.type_name,
           "[", s.numel, "] = ", s.nbytes(), " bytes");
    return *r;
  }
  void parse(const pickle::Limits& limits, const ZipReadOptions& zopts) {
    if (zopts.verify_crc_on_read && !zopts.verify_crc) {
      checked_ = std::make_unique<std::atomic<bool>[]>(zip_->records().size());
      checked(zip_->record("data.pkl"));
    }
    root_ = pickle::loads(zip_->bytes("data.pkl"), zip_->file_name() + ":" + zip_->prefix() + "/data.pkl", limits);
  }
  // CRC-checks a record the first time its bytes are taken (a flipped bit in a storage would
  // otherwise convert silently). The pages read for the check are dropped again, so checking
  // does not grow the resident set; the conversion faults them back from the page cache.
  void checked(const ZipRecord& r) const {
    if (!checked_) return;
    const auto i = static_cast<std::size_t>(&r - zip_->records().data());
    if (checked_[i].load(std::memory_order_acquire)) return;
    zip_->verify_crc(r);
    if (const MappedFile* m = zip_->mapped_file()) m->release(static_cast<std::size_t>(r.data_offset), static_cast<std::size_t>(r.size));
    checked_[i].store(true, std::memory_order_release);
  }
  std::unique_ptr<TorchZipReader> zip_;
  pickle::ObjectPtr root_;
  std::unique_ptr<std::atomic<bool>[]> checked_;  // per record: CRC verified
};

// ---------------------------------------------------------------- checkpoint directory

struct MpRankDir {
  std::string name;                  // "mp_rank_01_002_003"
  std::filesystem::path dir;
  std::vector<int> indices;          // numbers in the name: 1, 2 or 3 of them
  int tp = 0, pp = 0, ep = 0;        // resolved by resolve_rank_axes (defaults: second index = PP)
  std::filesystem::path model_file() const { return dir / "model_optim_rng.pt"; }
};

struct MegatronCheckpointDir {
  std::filesystem::path root;     // the --save/--load directory
  std::filesystem::path iter_dir; // root/release or root/iter_XXXXXXX
  bool release = false;
  std::int64_t iteration = 0;     // 0 for release
  std::vector<MpRankDir> ranks;   // sorted by (tp, pp, ep) after resolution
  const MpRankDir& rank(int tp, int pp, int ep) const {
    for (const auto& r : ranks)
      if (r.tp == tp && r.pp == pp && r.ep == ep) return r;
    fail(iter_dir.string(), ": no mp_rank directory for tp=", tp, " pp=", pp, " ep=", ep);
  }
};

namespace detail {
inline std::string read_small_text(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail(p.string(), ": cannot read");
  std::string s(4096, '\0');
  f.read(s.data(), static_cast<std::streamsize>(s.size()));
  s.resize(static_cast<std::size_t>(f.gcount()));
  return s;
}
inline std::string_view strip(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\n' || s.front() == '\r' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\r' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}
}  // namespace detail

// Parses "mp_rank_TT[_PPP][_EEE]"; nullopt when the name is not of that form.
inline std::optional<std::vector<int>> parse_mp_rank_name(std::string_view name) {
  constexpr std::string_view kPre = "mp_rank_";
  if (name.substr(0, kPre.size()) != kPre) return std::nullopt;
  name.remove_prefix(kPre.size());
  std::vector<int> v;
  while (true) {
    const auto us = name.find('_');
    const std::string_view part = name.substr(0, us);
    if (part.empty() || part.size() > 6 || part.find_first_not_of("0123456789") != std::string_view::npos) return std::nullopt;
    int x = 0;
    auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), x);
    if (ec != std::errc{} || p != part.data() + part.size()) return std::nullopt;
    v.push_back(x);
    if (us == std::string_view::npos) break;
    name.remove_prefix(us + 1);
  }
  if (v.size() > 3) return std::nullopt;
  return v;
}

// Two-number names are mp_rank_TT_PPP (PP > 1) or mp_rank_TT_EEE (PP = 1, EP > 1): Megatron's
// naming cannot tell them apart, so the caller says which (from args or flags).
inline void resolve_rank_axes(MegatronCheckpointDir& c, bool second_index_is_ep) {
  for (auto& r : c.ranks) {
    r.tp = r.indices[0];
    r.pp = r.indices.size() == 3 || (r.indices.size() == 2 && !second_index_is_ep) ? r.indices[1] : 0;
    r.ep = r.indices.size() == 3 ? r.indices[2] : (r.indices.size() == 2 && second_index_is_ep ? r.indices[1] : 0);
  }
  std::sort(c.ranks.begin(), c.ranks.end(),
            [](const MpRankDir& a, const MpRankDir& b) { return std::tie(a.tp, a.pp, a.ep) < std::tie(b.tp, b.pp, b.ep); });
  for (std::size_t k = 1; k < c.ranks.size(); ++k)
    if (c.ranks[k].tp == c.ranks[k - 1].tp && c.ranks[k].pp == c.ranks[k - 1].pp && c.ranks[k].ep == c.ranks[k - 1].ep)
      fail(c.iter_dir.string(), ": directories ", c.ranks[k - 1].name, " and ", c.ranks[k].name,
           " map to the same (tp, pp, ep) rank");
}

namespace detail {
// Fills c.ranks from the mp_rank_* directories of c.iter_dir and resolves their axes.
inline void scan_rank_dirs(MegatronCheckpointDir& c, bool second_index_is_ep) {
  namespace fs = std::filesystem;
  std::size_t arity = 0;
  for (const auto& e : fs::directory_iterator(c.iter_dir)) {
    if (!e.is_directory()) continue;
    const std::string name = e.path().filename().string();
    auto idx = parse_mp_rank_name(name);
    if (!idx) {
      if (name.rfind("mp_rank_", 0) == 0) fail(e.path().string(), ": malformed mp_rank directory name");
      continue;
    }
    if (arity && idx->size() != arity)
      fail(c.iter_dir.string(), ": mixed mp_rank name forms (", name, " has ", idx->size(), " indices, others ", arity, ")");
    arity = idx->size();
    MpRankDir r;
    r.name = name;
    r.dir = e.path();
    r.indices = std::move(*idx);
    c.ranks.push_back(std::move(r));
  }
  if (c.ranks.empty()) {
    if (fs::exists(c.iter_dir / "metadata.json") || fs::exists(c.iter_dir / ".metadata"))
      fail(c.iter_dir.string(), ": torch_dist/DCP checkpoint, not the legacy torch format");
    fail(c.iter_dir.string(), ": no mp_rank_* directories");
  }
  for (const auto& r : c.ranks)
    if (!fs::is_regular_file(r.model_file())) fail(r.model_file().string(), ": missing (rank directory without its checkpoint file)");
  resolve_rank_axes(c, second_index_is_ep);
}

// "release" -> (true, 0); "iter_0000123" -> (false, 123); anything else -> nullopt.
inline std::optional<std::pair<bool, std::int64_t>> parse_iteration_dir_name(std::string_view n) {
  if (n == "release") return std::pair<bool, std::int64_t>{true, 0};
  if (n.substr(0, 5) != "iter_" || n.size() < 6) return std::nullopt;
  std::int64_t it = 0;
  const auto digits = n.substr(5);
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), it);
  if (ec != std::errc{} || p != digits.data() + digits.size() || it < 0) return std::nullopt;
  return std::pair<bool, std::int64_t>{false, it};
}

inline bool has_mp_rank_dirs(const std::filesystem::path& d) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(d, ec))
    if (e.is_directory() && parse_mp_rank_name(e.path().filename().string())) return true;
  return false;
}
}  // namespace detail

// Opens a legacy checkpoint directory. `iteration` overrides the tracker file (-1: use it).
// Two-number rank names are taken as (tp, pp) unless `second_index_is_ep`.
inline MegatronCheckpointDir open_megatron_checkpoint(const std::filesystem::path& root, std::int64_t iteration = -1,
                                                      bool second_index_is_ep = false) {
  namespace fs = std::filesystem;
  MegatronCheckpointDir c;
  c.root = root;
  if (!fs::is_directory(root)) fail(root.string(), ": not a directory");
  if (iteration < 0) {
    const fs::path tracker = root / "latest_checkpointed_iteration.txt";
    if (!fs::exists(tracker))
      fail(root.string(), ": no latest_checkpointed_iteration.txt (not a Megatron legacy checkpoint directory?)");
    const std::string raw = detail::read_small_text(tracker);
    const std::string_view t = detail::strip(raw);
    if (t == "release") {
      c.release = true;
    } else {
      std::int64_t it = 0;
      auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), it);
      if (ec != std::errc{} || p != t.data() + t.size() || it < 0)
        fail(tracker.string(), ": expected an iteration number or 'release', found '", t, "'");
      c.iteration = it;
    }
  } else {
    c.iteration = iteration;
  }
  if (c.release) {
    c.iter_dir = root / "release";
  } else {
    char buf[32];
    std::snprintf(buf, sizeof buf, "iter_%07lld", static_cast<long long>(c.iteration));
    c.iter_dir = root / buf;
  }
  if (!fs::is_directory(c.iter_dir)) {
    std::string others;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root, ec))
      if (e.is_directory() && detail::parse_iteration_dir_name(e.path().filename().string()))
        others += (others.empty() ? "" : ", ") + e.path().filename().string();
    fail(c.iter_dir.string(), ": checkpoint directory named by the tracker is missing",
         others.empty() ? std::string() : " (the root holds " + others + "; pass one of them as the path)");
  }
  detail::scan_rank_dirs(c, second_index_is_ep);
  return c;
}

// Opens a legacy checkpoint from any of the paths a user may give: the root holding
// latest_checkpointed_iteration.txt (the tracker picks the iteration), an iteration directory
// (`release/`, `iter_NNNNNNN/`: that one, whatever the tracker says) or any directory holding
// mp_rank_* directories directly.
inline MegatronCheckpointDir open_megatron_checkpoint_at(const std::filesystem::path& path,
                                                         bool second_index_is_ep = false) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(path)) fail(path.string(), ": not a directory");
  if (fs::exists(path / "latest_checkpointed_iteration.txt")) return open_megatron_checkpoint(path, -1, second_index_is_ep);
  const fs::path abs = fs::absolute(path).lexically_normal();
  const fs::path dir = abs.has_filename() ? abs : abs.parent_path();
  if (detail::has_mp_rank_dirs(dir)) {
    MegatronCheckpointDir c;
    c.iter_dir = dir;
    c.root = dir.parent_path();
    if (auto it = detail::parse_iteration_dir_name(dir.filename().string())) {
      c.release = it->first;
      c.iteration = it->second;
    } else {
      c.release = true;
    }
    detail::scan_rank_dirs(c, second_index_is_ep);
    return c;
  }
  if (fs::exists(path / "metadata.json") || fs::exists(path / ".metadata"))
    fail(path.string(), ": torch_dist/DCP checkpoint, not the legacy torch format");
  fail(path.string(), ": not a Megatron legacy checkpoint: no latest_checkpointed_iteration.txt and no mp_rank_* "
       "directories (give the checkpoint root, or its release/ or iter_NNNNNNN/ directory)");
}

// ---------------------------------------------------------------- one model_optim_rng.pt


struct ModelEntry {
  enum class Kind { Tensor, TeFp8Blockwise, ExtraState, None, Other };
  std::string name;
  Kind kind = Kind::Other;
  std::optional<pickle::TensorRef> tensor;       // Tensor, or ExtraState held as a uint8 tensor
  std::optional<TeFp8BlockwiseRef> fp8;          // TeFp8Blockwise
  pickle::ObjectPtr object;                      // the raw value, always set
};

struct ModelStateDict {
  std::string key;                  // "model", "model0", ...
  std::vector<ModelEntry> entries;  // file order
  std::unordered_map<std::string, std::size_t> index;  // name -> position in entries
  const ModelEntry* find(std::string_view name) const {
    auto it = index.find(std::string(name));
    return it == index.end() ? nullptr : &entries[it->second];
  }
};

struct MegatronRankFile {
  std::unique_ptr<TorchFile> file;
  std::map<std::string, pickle::ObjectPtr> args;  // argparse.Namespace attributes (empty if absent)
  std::optional<double> checkpoint_version;
  std::optional<std::int64_t> iteration;
  std::vector<ModelStateDict> models;             // "model" or "model0", "model1", ... in order
  // Other top-level entries (a training checkpoint's optimizer, opt_param_scheduler, rng_state,
  // num_floating_point_operations_so_far, ...): parsed but not interpreted.
  std::vector<std::string> other_keys;

  const std::string& file_name() const { return file->file_name(); }
  pickle::ObjectPtr arg(std::string_view name) const {
    auto it = args.find(std::string(name));
    return it == args.end() ? nullptr : it->second;
  }
  std::optional<std::int64_t> arg_int(std::string_view name) const {
    auto v = arg(name);
    if (!v || v->kind != pickle::Kind::Int) return std::nullopt;
    return v->i;
  }
  AnyConstView view(const pickle::TensorRef& t, std::string_view what = "tensor", bool verify = true) const {
    return file->view(t, what, verify);
  }
};

inline MegatronRankFile load_megatron_rank_file(const std::filesystem::path& path, ZipReadOptions zopts = {},
                                                TeDTypeNumbering numbering = TeDTypeNumbering::Auto) {
  using pickle::Kind;
  MegatronRankFile f;
  f.file = std::make_unique<TorchFile>(path, zopts);
  const std::string& fn = f.file->file_name();
  const pickle::Object& root = *f.file->root();
  if (root.kind != Kind::Dict) fail(fn, ": top-level object is a ", pickle::kind_name(root.kind), ", expected a dict");
  if (auto a = root.get("args"); a && !a->is_none()) {
    if (a->kind != Kind::Namespace) fail(fn, ": 'args' is a ", pickle::kind_name(a->kind), ", expected argparse.Namespace");
    for (const auto& [k, v] : a->dict) f.args[k->s] = v;
  }
  if (auto v = root.get("checkpoint_version"); v && !v->is_none()) f.checkpoint_version = v->as_float(fn + ": checkpoint_version");
  if (auto v = root.get("iteration"); v && !v->is_none()) f.iteration = v->as_int(fn + ": iteration");

  auto read_model = [&](const std::string& key, const pickle::Object& d) {
    if (d.kind != Kind::Dict) fail(fn, ": '", key, "' is a ", pickle::kind_name(d.kind), ", expected a state dict");
    ModelStateDict m;
    m.key = key;
    m.entries.reserve(d.dict.size());
    for (const auto& [k, v] : d.dict) {
      if (k->kind != Kind::Str) fail(fn, ": '", key, "' has a non-string key ", pickle::describe(*k));
      ModelEntry e;
      e.name = k->s;
      e.object = v;
      const bool extra = e.name.size() >= 12 && e.name.compare(e.name.size() - 12, 12, "_extra_state") == 0;
      if (extra) {
        e.kind = ModelEntry::Kind::ExtraState;
        if (v->kind == Kind::Tensor) e.tensor = *v->tensor;
      } else if (v->kind == Kind::Tensor) {
        e.kind = ModelEntry::Kind::Tensor;
        e.tensor = *v->tensor;
      } else if (is_te_fp8_blockwise(*v)) {
        e.kind = ModelEntry::Kind::TeFp8Blockwise;
        e.fp8 = read_te_fp8_blockwise(*v, fn + ": " + key + "." + e.name, numbering);
      } else if (v->is_none()) {
        e.kind = ModelEntry::Kind::None;
      }
      if (!m.index.emplace(e.name, m.entries.size()).second) fail(fn, ": '", key, "' has the key '", e.name, "' twice");
      m.entries.push_back(std::move(e));
    }
    f.models.push_back(std::move(m));
  };
  if (auto m = root.get("model")) {
    read_model("model", *m);
  } else {
    for (int k = 0;; ++k) {
      const std::string key = "model" + std::to_string(k);
      auto mk = root.get(key);
      if (!mk) break;
      read_model(key, *mk);
    }
  }
  for (const auto& [k, v] : root.dict) {
    if (k->kind != Kind::Str) continue;
    const std::string& n = k->s;
    if (n == "args" || n == "checkpoint_version" || n == "iteration") continue;
    bool model = false;
    for (const auto& m : f.models) model = model || m.key == n;
    if (!model) f.other_keys.push_back(n);
  }
  return f;
}

// Payload of a TE `_extra_state` entry: the uint8 tensor's bytes (TE >= 2.0: a pickle, protocol
// 4/5, or empty) or the io.BytesIO buffer (TE 1.x: a nested torch.save archive, open it with
// TorchFile(span, name)). nullopt for None. The span lives as long as `f`.
inline std::optional<std::span<const std::byte>> extra_state_bytes(const MegatronRankFile& f, const ModelEntry& e) {
  using pickle::Kind;
  const pickle::Object& o = *e.object;
  if (o.is_none()) return std::nullopt;
  if (o.kind == Kind::Tensor) {
    const auto& t = *o.tensor;
    if (t.dtype != DType::U8 || t.shape.size() != 1 || (t.shape[0] > 1 && t.strides[0] != 1))
      fail(f.file_name(), ": ", e.name, " is not a contiguous 1-D uint8 tensor");
    return f.file->storage_bytes(t.storage).subspan(static_cast<std::size_t>(t.storage_offset),
                                                     static_cast<std::size_t>(t.shape[0]));
  }
  if (o.kind == Kind::NewObj && o.callable->is_global("_io", "BytesIO") && o.state && o.state->kind == Kind::Tuple &&
      !o.state->items.empty() && o.state->items[0]->kind == Kind::Bytes) {
    const std::string& b = o.state->items[0]->s;
    return std::span<const std::byte>(reinterpret_cast<const std::byte*>(b.data()), b.size());
  }
  fail(f.file_name(), ": ", e.name, " holds ", pickle::describe(o), ", not a TE extra state");
}

// Resolves two-number rank names with the parallel sizes stored in a rank file's args:
// the second number is EP when pipeline_model_parallel_size is 1 and expert_model_parallel_size > 1.
inline void resolve_rank_axes(MegatronCheckpointDir& c, const MegatronRankFile& any_rank) {
  const auto pp = any_rank.arg_int("pipeline_model_parallel_size").value_or(1);
  // Megatron-LM's name, then LoongForge's
  const auto ep = any_rank.arg_int("expert_model_parallel_size").value_or(any_rank.arg_int("expert_parallel_size").value_or(1));
  resolve_rank_axes(c, pp == 1 && ep > 1);
}

}  // namespace ckbridge::format
