cd /tmp/demo4/recipes/synth
A=/tmp/demo4/.venv/bin/imputer-asr
O="--set model.dropout=0.0 --set data.spec_augment=false"
$A train --config conf/imputer.json $O --exp-dir exp/ctc-matched-noreg --resume --bpe /tmp/demo4/data/synth/demo/lang/bpe40.model --init-from exp/ctc/model.pt --train-cuts /tmp/demo4/data/synth/demo/fbank/cuts_train_fbank.jsonl.gz --dev-cuts /tmp/demo4/data/synth/demo/fbank/cuts_dev_fbank.jsonl.gz > /tmp/noreg-matched.log 2>&1
$A train-imputer --config conf/imputer.json $O --exp-dir exp/imputer-noreg --resume --bpe /tmp/demo4/data/synth/demo/lang/bpe40.model --init-from exp/ctc/model.pt --train-cuts /tmp/demo4/data/synth/demo/fbank/cuts_train_aligned.jsonl.gz --dev-cuts /tmp/demo4/data/synth/demo/fbank/cuts_dev_fbank.jsonl.gz > /tmp/noreg-imputer.log 2>&1
echo done > /tmp/noreg.done
