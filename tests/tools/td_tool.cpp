// td_tool: ckbridge's torch_dist (Megatron-Core distributed checkpoint) reader and writer on the
// command line, for cross-checks with real torch / Megatron-Core (tests/python, manual checks).
//   td_tool write <in.safetensors> <out_dir> [--files N] [--chunk-rows R] [--extra-state]
//       every tensor of the file becomes a torch_dist tensor of the same name, stored in chunks
//       of R rows along dim 0 (0: one chunk); --extra-state adds a `<name>._extra_state/shard_0_1`
//       object ([None], as a local-spec linear's) after each 2-D tensor
//   td_tool copy <dir> <out_dir> [--files N] same keys, chunks and objects ([None] only), rewritten
//   td_tool read <dir> <out.safetensors>    every tensor of the checkpoint, assembled
//   td_tool dump <dir>                      keys, dtypes, shapes, chunks and storage, one per line
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ckbridge/format/safetensors_file.hpp"
#include "ckbridge/format/safetensors_writer.hpp"
#include "ckbridge/format/torch_dist_reader.hpp"
#include "ckbridge/format/torch_dist_writer.hpp"

using namespace ckbridge;
namespace td = ckbridge::format::torch_dist;

int main(int argc, char** argv) try {
  if (argc < 3) {
    std::fprintf(stderr, "usage: td_tool write|read|dump ...\n");
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "write" && argc >= 4) {
    unsigned files = 2;
    std::int64_t rows = 0;
    bool extra = false;
    for (int i = 4; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--files" && i + 1 < argc) files = static_cast<unsigned>(std::atoi(argv[++i]));
      else if (a == "--chunk-rows" && i + 1 < argc) rows = std::atoll(argv[++i]);
      else if (a == "--extra-state") extra = true;
      else fail("td_tool: unknown argument '", a, "'");
    }
    safetensors::File in(argv[2]);
    std::vector<td::WriteEntry> es;
    for (const auto& t : in.tensors()) {
      td::WriteEntry w;
      w.fqn = t.name;
      w.dtype = t.dtype;
      w.size = t.shape;
      const AnyConstView whole = in.view(t);
      const std::int64_t n0 = t.shape.empty() ? 1 : t.shape[0];
      const std::int64_t step = rows > 0 && !t.shape.empty() ? rows : n0;
      std::int64_t k = 0;
      for (std::int64_t r = 0; r < n0 || (n0 == 0 && r == 0); r += std::max<std::int64_t>(step, 1), ++k) {
        td::WriteChunk c;
        c.offsets = Shape(t.shape.size(), 0);
        c.sizes = t.shape;
        if (!t.shape.empty()) {
          c.offsets[0] = r;
          c.sizes[0] = std::min(step, n0 - r);
        }
        c.produce = [whole, c](Tensor& scratch) {
          AnyConstView v = whole.shape.empty() ? whole : whole.slice(0, c.offsets[0], c.offsets[0] + c.sizes[0]);
          scratch = Tensor::copy_of(v);  // the safetensors mapping need not be aligned
          return scratch.cview();
        };
        w.chunks.push_back(std::move(c));
        if (n0 == 0) break;
      }
      if (w.chunks.size() > 1)
        for (std::size_t i = 0; i < w.chunks.size(); ++i) w.chunks[i].index = static_cast<std::int64_t>(i);
      else
        w.strides = contiguous_strides(t.shape);
      const bool two_d = t.shape.size() == 2;
      es.push_back(std::move(w));
      if (extra && two_d) es.push_back(td::WriteEntry::extra_state_none(t.name + "._extra_state/shard_0_1"));
    }
    td::WriteOptions o;
    o.files = files;
    const auto rep = td::write_checkpoint(argv[3], es, o);
    std::printf("%zu entries, %zu data files, %llu bytes\n", es.size(), rep.files.size(),
                static_cast<unsigned long long>(rep.bytes));
    return 0;
  }
  if (cmd == "copy" && argc >= 4) {
    td::Reader r(argv[2]);
    td::WriteOptions o;
    for (int i = 4; i < argc; ++i)
      if (std::string(argv[i]) == "--files" && i + 1 < argc) o.files = static_cast<unsigned>(std::atoi(argv[++i]));
    std::vector<td::WriteEntry> es;
    for (const auto& e : r.metadata().entries) {
      if (e.bytes) {
        const auto obj = r.read_object(e.fqn);
        if (!obj->is(pickle::Kind::List) || obj->items.size() != 1 || !obj->items[0]->is_none())
          fail("td_tool copy: object '", e.fqn, "' is not [None]");
        es.push_back(td::WriteEntry::extra_state_none(e.fqn));
        continue;
      }
      td::WriteEntry w;
      w.fqn = e.fqn;
      w.dtype = e.dtype;
      w.size = e.size;
      w.strides = e.strides;
      for (const auto& c : e.chunks)
        w.chunks.push_back({c.offsets, c.sizes, c.index, [&r, fqn = e.fqn, c](Tensor& s) {
                              s = r.read_region(fqn, c.offsets, c.sizes);
                              return s.cview();
                            }});
      es.push_back(std::move(w));
    }
    const auto rep = td::write_checkpoint(argv[3], es, o);
    std::printf("%zu entries, %zu data files, %llu bytes\n", es.size(), rep.files.size(),
                static_cast<unsigned long long>(rep.bytes));
    return 0;
  }
  if (cmd == "read" && argc >= 4) {
    td::Reader r(argv[2]);
    std::vector<Tensor> keep;
    std::vector<std::pair<std::string, AnyConstView>> out;
    for (const auto& e : r.metadata().entries)
      if (!e.bytes) keep.push_back(r.read(e.fqn));
    std::size_t i = 0;
    for (const auto& e : r.metadata().entries)
      if (!e.bytes) out.emplace_back(e.fqn, keep[i++].cview());
    safetensors::save_file(argv[3], out);
    return 0;
  }
  if (cmd == "dump") {
    td::Reader r(argv[2]);
    for (const auto& e : r.metadata().entries) {
      if (e.bytes) {
        std::printf("%s bytes %s@%llu+%llu\n", e.fqn.c_str(), e.chunks[0].file.c_str(),
                    static_cast<unsigned long long>(e.chunks[0].offset), static_cast<unsigned long long>(e.chunks[0].length));
        continue;
      }
      std::printf("%s %s %s", e.fqn.c_str(), std::string(safetensors_name(e.dtype)).c_str(), shape_str(e.size).c_str());
      for (const auto& c : e.chunks)
        std::printf(" %s:%s@%s+%llu", shape_str(c.offsets).c_str(), shape_str(c.sizes).c_str(), c.file.c_str(),
                    static_cast<unsigned long long>(c.offset));
      std::printf("\n");
    }
    return 0;
  }
  std::fprintf(stderr, "td_tool: unknown command or missing arguments\n");
  return 2;
} catch (const std::exception& e) {
  std::fprintf(stderr, "td_tool: %s\n", e.what());
  return 1;
}
