// Links the installed library: the host reference needs no GPU, so this runs everywhere.
#include <moe_dispatch/dispatch_stage.hpp>
#include <moe_dispatch/reference.hpp>

#include <cstdio>
#include <vector>

int main() {
  const std::vector<std::int32_t> ids{2, 3, 4, 1, 2, 4, 1, 3, 4, 1, 2, 3};
  const auto r = moe_dispatch::align_reference(ids, moe_dispatch::AlignShape{5, 3, 4, false});
  std::printf("num_tokens_post_pad = %d\n", r.num_tokens_post_pad);
  return r.num_tokens_post_pad == 16 ? 0 : 1;
}
