// st_tool: drives the safetensors reader/writer for tests/python/test_safetensors_interop.py.
//   st_tool copy IN OUT THREADS PIECE SEED  re-write IN through FileWriter: PIECE-byte pieces in
//                                           shuffled order from THREADS threads, same metadata
//   st_tool dump PATH                       JSON (stdout) of a file or checkpoint directory:
//                                           metadata, and per tensor name/dtype/shape/hex bytes
//   st_tool check PATH                      exit 0 if the file opens, else 1 + message on stderr
//   st_tool reshard IN_DIR OUT_DIR MAX_BYTES [TOTAL_PARAMETERS]
//                                           re-shard a checkpoint (HF greedy plan, index as
//                                           transformers writes it), tensors in IN's order
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ckbridge/format/safetensors.hpp"

namespace st = ckbridge::safetensors;
namespace fs = std::filesystem;

namespace {

void dump_tensor(rapidjson::Writer<rapidjson::StringBuffer>& w, const std::string& name, const st::TensorInfo& t,
                 std::span<const std::byte> bytes) {
  static constexpr char hex[] = "0123456789abcdef";
  w.StartObject();
  w.Key("name");
  w.String(name.data(), static_cast<rapidjson::SizeType>(name.size()));
  w.Key("dtype");
  const auto d = ckbridge::safetensors_name(t.dtype);
  w.String(d.data(), static_cast<rapidjson::SizeType>(d.size()));
  w.Key("shape");
  w.StartArray();
  for (auto e : t.shape) w.Int64(e);
  w.EndArray();
  std::string h;
  h.reserve(bytes.size() * 2);
  for (std::byte b : bytes) {
    h += hex[std::to_integer<int>(b) >> 4];
    h += hex[std::to_integer<int>(b) & 15];
  }
  w.Key("hex");
  w.String(h.data(), static_cast<rapidjson::SizeType>(h.size()));
  w.EndObject();
}

int dump(const fs::path& p) {
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  w.StartObject();
  if (fs::is_directory(p)) {
    const st::Checkpoint ck(p);
    w.Key("files");
    w.StartArray();
    for (const auto& f : ck.files()) w.String(f.filename().c_str());
    w.EndArray();
    w.Key("total_size");
    w.Uint64(ck.total_size());
    w.Key("tensors");
    w.StartArray();
    for (const auto& name : ck.names()) {
      const auto l = ck.locate(name);
      dump_tensor(w, name, l.info, l.file.bytes(l.info));
    }
    w.EndArray();
  } else {
    const st::File f(p);
    w.Key("metadata");
    if (f.header().metadata) {
      w.StartObject();
      for (const auto& [k, v] : f.metadata()) {
        w.Key(k.data(), static_cast<rapidjson::SizeType>(k.size()));
        w.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
      }
      w.EndObject();
    } else {
      w.Null();
    }
    w.Key("tensors");
    w.StartArray();
    for (const auto& t : f.tensors()) dump_tensor(w, t.name, t, f.bytes(t));
    w.EndArray();
  }
  w.EndObject();
  std::cout << sb.GetString() << "\n";
  return 0;
}

int copy(const fs::path& in, const fs::path& out, int threads, std::size_t piece, unsigned seed) {
  const st::File f(in);
  std::vector<st::TensorSpec> specs;
  for (const auto& t : f.tensors()) specs.push_back({t.name, t.dtype, t.shape});
  st::FileWriter w(out, specs, f.header().metadata);
  struct Piece {
    const st::TensorInfo* t;
    std::uint64_t off, len;
  };
  std::vector<Piece> pieces;
  for (const auto& t : f.tensors())
    for (std::uint64_t off = 0; off < t.size_bytes(); off += piece)
      pieces.push_back({&t, off, std::min<std::uint64_t>(piece, t.size_bytes() - off)});
  std::mt19937 rng(seed);
  std::shuffle(pieces.begin(), pieces.end(), rng);
  std::atomic<std::size_t> next{0};
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i)
    pool.emplace_back([&] {
      for (std::size_t k; (k = next.fetch_add(1)) < pieces.size();) {
        const Piece& pc = pieces[k];
        w.write(pc.t->name, f.bytes(*pc.t).subspan(pc.off, pc.len), pc.off);
      }
    });
  for (auto& t : pool) t.join();
  w.commit();
  return 0;
}

int reshard(const fs::path& in, const fs::path& out, std::uint64_t max_bytes, std::optional<std::uint64_t> params) {
  const st::Checkpoint ck(in);
  std::vector<st::TensorSpec> specs;
  for (const auto& name : ck.names()) {
    const auto& t = ck.locate(name).info;
    specs.push_back({name, t.dtype, t.shape});
  }
  fs::create_directories(out);
  const auto plan = st::plan_shards(specs, max_bytes);
  std::vector<std::thread> pool;
  std::vector<std::string> errors(plan.size());
  for (std::size_t i = 0; i < plan.size(); ++i)
    pool.emplace_back([&, i] {
      try {
        st::FileWriter w(out / plan[i].file_name, plan[i].tensors);
        for (const auto& s : plan[i].tensors) w.write(s.name, ck.view(s.name));
        w.commit();
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  for (auto& t : pool) t.join();
  for (const auto& e : errors)
    if (!e.empty()) throw ckbridge::Error(e);
  if (plan.size() > 1) st::write_index(out, st::weight_map(plan), st::total_size(plan), params);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 6 && a[0] == "copy") return copy(a[1], a[2], std::stoi(a[3]), std::stoull(a[4]), std::stoul(a[5]));
    if (a.size() == 2 && a[0] == "dump") return dump(a[1]);
    if (a.size() == 2 && a[0] == "check") {
      const st::File f(a[1]);
      std::cout << "ok " << f.size() << "\n";
      return 0;
    }
    if ((a.size() == 4 || a.size() == 5) && a[0] == "reshard")
      return reshard(a[1], a[2], std::stoull(a[3]), a.size() == 5 ? std::optional<std::uint64_t>(std::stoull(a[4])) : std::nullopt);
    std::cerr << "usage: st_tool copy IN OUT THREADS PIECE SEED | dump PATH | check PATH | reshard IN OUT MAX [PARAMS]\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
