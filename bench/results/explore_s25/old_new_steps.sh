#!/usr/bin/env bash
# side by side: old code (e643024) vs new code, 10 recipe steps each, with and without the MALLOC settings
cd /work/main
for round in 1 2; do
for env in plain malloc; do
for code in old new; do
  out=runs/side_${code}_${env}_${round}; rm -rf $out; mkdir -p $out; cp runs/NPG3P/generated_unrelated.jsonl $out/
  if [ $code = old ]; then PP=/tmp/oldwt/src; CFG=/tmp/oldwt/configs/smollm2-cpu.yaml; else PP=/work/main/src; CFG=smollm2-cpu; fi
  if [ $env = malloc ]; then E="MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1073741824"; else E=""; fi
  /usr/bin/time -f "%e s wall %U user %S sys %M KB" env $E PYTHONPATH=$PP .venv/bin/python -m biasunlearn train --model smollm2-135m --config $CFG --out $out --stop_at_step 10 --skip_final_eval true --disable_tqdm true > $out.log 2> $out.time
  rt=$(grep -o "'train_runtime': '[0-9.]*'" $out.log)
  echo "$code $env round$round: $rt $(tail -1 $out.time)"
done; done; done
