#!/usr/bin/env bash
# Regenerates examples/speech.wav, the demo's example speech: three sentences with 1.5 s pauses between them,
# spoken by espeak-ng (apt package espeak-ng), so the motion can be compared in speech and in silence.
set -euo pipefail
cd "$(dirname "$0")"
espeak-ng -m -v en-us -s 150 -p 45 -w speech.wav \
  '<speak>Welcome to DiffGesture for Blender. Your character can now talk with its hands.
   <break time="1500ms"/> Every beat of the voice becomes a stroke of the arms.
   <break time="1500ms"/> Press generate, and watch the rhythm come alive.</speak>'
