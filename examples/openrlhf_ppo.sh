#!/usr/bin/env bash
# OpenRLHF PPO with raw_rm as the remote reward model: no glue code, OpenRLHF posts to /get_reward as it always does.
#
# 1. Serve the champion ensemble (one URI) on the head node. OpenRLHF cannot send an API key header, so either
#    keep the server on loopback (rollout workers on the same node) or, on a trusted private network, opt out of
#    auth explicitly (it is logged loudly):
#      raw-rm serve --model models:/raw_rm-reward@champion --host 0.0.0.0 allow_unauthenticated_network=true
#    or carry the key in the URL (see docs/http_api.md, "Authentication").
# 2. Launch PPO pointing --remote_rm_url at it. Which aggregate is the reward (mean, lcb = mean - k*std, min,
#    mean - lambda*var) is chosen on the server (`reward: lcb` in serve_configs/ensemble.yaml); OpenRLHF logs
#    reward_mean / reward_std / reward_lcb from extra_logs next to its own metrics.
set -euo pipefail
RM_URL=${RM_URL:-http://127.0.0.1:8000/get_reward}

ray job submit --address="${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --runtime-env-json='{"working_dir": "/openrlhf"}' \
  -- python3 -m openrlhf.cli.train_ppo_ray \
  --ref_num_nodes 1 --ref_num_gpus_per_node 1 \
  --actor_num_nodes 1 --actor_num_gpus_per_node 1 \
  --critic_num_nodes 1 --critic_num_gpus_per_node 1 \
  --vllm_num_engines 1 --vllm_tensor_parallel_size 1 \
  --pretrain OpenRLHF/Llama-3-8b-sft-mixture \
  --remote_rm_url "$RM_URL" \
  --prompt_data OpenRLHF/prompt-collection-v0.1 --input_key context_messages --apply_chat_template \
  --micro_train_batch_size 8 --train_batch_size 128 --micro_rollout_batch_size 16 --rollout_batch_size 1024 \
  --max_epochs 1 --prompt_max_len 1024 --generate_max_len 1024 \
  --actor_learning_rate 5e-7 --critic_learning_rate 9e-6 --init_kl_coef 0.01 \
  --zero_stage 3 --bf16 --save_path ./checkpoint/llama3-8b-rlhf-raw_rm
