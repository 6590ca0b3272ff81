#!/usr/bin/env bash
# Issue 29 part 1: ACKTR's controlled arms on MuJoCo (and an NPG reference arm), one run at a time, resumable.
#
#   nice -n 5 bash experiments/acktr/arms_300k.sh
#   TASKS=Hopper-v5 SEEDS=100,101 ARMS="preset" bash experiments/acktr/arms_300k.sh
#
# Each arm is a MuJoCo preset plus its overrides (below). The arms up to kl-measured24-net64-fresh were defined on
# the preset of their time (baselines' settings, until a74280b): they are run on it, spelled out in OLD_PRESET_*
# below, so that they run as they ran. The measured-preset arms start from the CLI's preset of now (the
# policy_step="measured" setup they led to). Runs go one by one, seed by seed with
# the arms side by side (so a stopped session leaves paired seeds), task after task, through the CLI's grid
# (rlgeom.tools.benchmark): a finished run has done.json (final deterministic evaluation of 10 episodes, the
# git commit, the preset and the overrides) and is skipped on a rerun; an unfinished one is set aside and run
# again. The table: python experiments/acktr/arms_table.py LOGDIR
set -u
cd "$(dirname "$0")/../.."

TASKS="${TASKS:-Hopper-v5 HalfCheetah-v5 Walker2d-v5}"
SEEDS="${SEEDS:-100,101,102,103,104}"   # diagnostic seeds, not the grid's 0-4
ARMS="${ARMS:-preset log-std-init-m2}"  # log-std-own: the 100k arm of §0.7 (no gain)
TIMESTEPS="${TIMESTEPS:-300000}"
LOGDIR="${LOGDIR:-experiments/results/acktr_arms_300k}"

# ACKTR's MuJoCo preset until a74280b, where it differs from the one of now (agents/presets.py): the arms' base
OLD_PRESET_HP="kl_clip=0.01 target_kl=0.002 gae_lambda=1.0 critic_step=with_actor critic_updates=1 momentum=0.9 stat_decay=0.99 update_inverse_every=10 policy_step=clip"
OLD_PRESET_NET='"net_arch":[256,256]'

on_old_preset() {  # an arm's overrides ($1) on the old preset: its --hp pairs after the old ones (the last one wins)
    local args="$1"
    if [[ "$args" == *"--hp "* ]]; then
        args="${args/--hp /--hp $OLD_PRESET_HP }"
    else
        args="--hp $OLD_PRESET_HP $args"
    fi
    if [[ "$args" == *'"net_arch"'* ]]; then
        :
    elif [[ "$args" == *"--policy-kwargs {"* ]]; then
        args="${args/--policy-kwargs \{/--policy-kwargs \{$OLD_PRESET_NET,}"
    else
        args="$args --policy-kwargs {$OLD_PRESET_NET}"
    fi
    echo "$args"
}

arm_args() {  # the arm's CLI overrides (--hp, --policy-kwargs)
    case "$1" in
        # the CLI's preset of now, and it with log σ's natural step normalised to kl_clip / 2 before the measured
        # rescale: σ then keeps ~10 % of each step's KL, about its share in NPG's direction (§0.11), against < 1 %
        measured-preset) echo "" ;;
        measured-preset-sigma-budget) echo "--hp log_std_step=budget" ;;
        npg-*) arm_overrides "$1" ;;
        *) local overrides
           overrides=$(arm_overrides "$1") || return 2
           on_old_preset "$overrides" ;;
    esac
}

arm_overrides() {  # the overrides that define each arm, on the preset of its time
    case "$1" in
        preset) echo "" ;;
        log-std-own) echo "--hp log_std_step=own" ;;
        # σ starts at e^-2 = 0.135 (rl-zoo's MuJoCo policy_kwargs, log_std_init -2), where TRPO's σ ends at 1M
        log-std-init-m2) echo '--policy-kwargs {"log_std_init":-2.0}' ;;
        # the critic steps at the scheduled lr; target_kl's multiplier (set by the policy's KL) steers the actor only
        critic-own) echo "--hp critic_step=own" ;;
        critic-own-m2) echo '--hp critic_step=own --policy-kwargs {"log_std_init":-2.0}' ;;
        # + baselines' acktr_cont advantage estimator: GAE(0.97), advantages standardised per batch
        cont) echo "--hp critic_step=own gae_lambda=0.97 normalize_advantage=True" ;;
        cont-m2) echo '--hp critic_step=own gae_lambda=0.97 normalize_advantage=True --policy-kwargs {"log_std_init":-2.0}' ;;
        # + log σ's natural step normalised to half the KL target every update (agents/acktr.py, log_std_step)
        cont-sigma) echo "--hp critic_step=own gae_lambda=0.97 normalize_advantage=True log_std_step=budget" ;;
        # + a KL budget per update near TRPO's measured one on these tasks (0.03-0.2 per 1024 steps)
        cont-kl10) echo "--hp critic_step=own gae_lambda=0.97 normalize_advantage=True target_kl=0.02 kl_clip=0.1" ;;
        # the critic fitted in 25 K-FAC passes per batch (baselines' acktr_cont value function), at the scheduled lr
        critic25) echo "--hp critic_step=own critic_updates=25" ;;
        # + acktr_cont's estimator: with a fitted critic, GAE(0.97) and standardised advantages
        cont25) echo "--hp critic_step=own gae_lambda=0.97 normalize_advantage=True critic_updates=25" ;;
        # the fitted critic with a KL target near what TRPO's preset measures per 2048 steps (0.03) on Walker2d
        critic25-kl10) echo "--hp critic_step=own critic_updates=25 target_kl=0.02 kl_clip=0.1" ;;
        # + log σ's own step spending half that target every update (σ otherwise keeps ~0.2 % of the KL)
        critic25-kl10-sigma) echo "--hp critic_step=own critic_updates=25 target_kl=0.02 kl_clip=0.1 log_std_step=budget" ;;
        # + K-FAC damping 0.1 in place of 0.01 (baselines' value-function K-FAC; TRPO's CG damping on Walker2d is 0.6):
        # less of the 1/λ amplification of the factors' small eigen-directions in the mean's step
        critic25-kl10-sigma-d01) echo "--hp critic_step=own critic_updates=25 target_kl=0.02 kl_clip=0.1 log_std_step=budget damping=0.1" ;;
        # critic25-kl10 on NPG's setup (TRPO's Walker2d preset: a 64-64 tanh network, GAE 0.95): what is left
        # between it and npg-kl10 is K-FAC's direction (and its critic, momentum and lr multiplier)
        kl10-net64) echo '--hp critic_step=own critic_updates=25 target_kl=0.02 kl_clip=0.1 gae_lambda=0.95 --policy-kwargs {"net_arch":[64,64]}' ;;
        # + no momentum: each update is the K-FAC step of its own batch, as NPG's is its own CG solve
        kl10-net64-m0) echo '--hp critic_step=own critic_updates=25 target_kl=0.02 kl_clip=0.1 gae_lambda=0.95 momentum=0.0 --policy-kwargs {"net_arch":[64,64]}' ;;
        # NPG's step rule with K-FAC's Fisher: every policy step normalised to a K-FAC KL of 0.02 (NPG's max_kl), no
        # momentum, no lr multiplier (whose steps of 1.5 spread the measured KL per update over 0.001-0.08 on Walker2d)
        kl-norm-net64) echo '--hp critic_step=own critic_updates=25 gae_lambda=0.95 target_kl=None policy_step=normalised kl_clip=0.02 momentum=0.0 --policy-kwargs {"net_arch":[64,64]}' ;;
        # + K-FAC statistics of the current batch only, inverted every update (stat_decay 0, T_inv 1): with the
        # running factors the measured KL of kl-norm-net64's steps was 58-90x K-FAC's ΔᵀF̂Δ (1.2-1.8 nats per update);
        # with the batch's own factors the exact dᵀFd is 4.3-4.5x K-FAC's (direction_quality.py, RESULTS.md §0.11)
        kl-norm-net64-fresh) echo '--hp critic_step=own critic_updates=25 gae_lambda=0.95 target_kl=None policy_step=normalised kl_clip=0.02 momentum=0.0 stat_decay=0.0 update_inverse_every=1 --policy-kwargs {"net_arch":[64,64]}' ;;
        # + policy_step=measured: the normalised step rescaled by its own measured KL to kl_clip 0.03 (about TRPO's
        # measured KL per update on Walker2d), where a fixed K-FAC kl_clip spent 0.07 on Walker2d and 0.13 on Hopper
        kl-measured-net64-fresh) echo '--hp critic_step=own critic_updates=25 gae_lambda=0.95 target_kl=None policy_step=measured kl_clip=0.03 momentum=0.0 stat_decay=0.0 update_inverse_every=1 --policy-kwargs {"net_arch":[64,64]}' ;;
        # the same at kl_clip 0.06, near what kl-norm-net64-fresh's fixed K-FAC budget measured on Walker2d (0.07), its best arm there
        kl-measured06-net64-fresh) echo '--hp critic_step=own critic_updates=25 gae_lambda=0.95 target_kl=None policy_step=measured kl_clip=0.06 momentum=0.0 stat_decay=0.0 update_inverse_every=1 --policy-kwargs {"net_arch":[64,64]}' ;;
        # the same at kl_clip 0.24, TRPO's max_kl on HalfCheetah (the zoo's target_kl 0.04 × 6 action dimensions)
        kl-measured24-net64-fresh) echo '--hp critic_step=own critic_updates=25 gae_lambda=0.95 target_kl=None policy_step=measured kl_clip=0.24 momentum=0.0 stat_decay=0.0 update_inverse_every=1 --policy-kwargs {"net_arch":[64,64]}' ;;
        # not ACKTR: rlgeom's NPG (TRPO's MuJoCo preset, the exact Fisher by conjugate gradient, an Adam critic of 20
        # epochs) held to ACKTR's KL budget, 0.002 per 2048 steps: does that budget alone stall these tasks?
        npg-budget) echo "--hp max_kl=0.002" ;;
        # NPG at critic25-kl10's budget (0.02): the exact-Fisher direction where ACKTR's K-FAC one spends 0.015
        npg-kl10) echo "--hp max_kl=0.02" ;;
        *) echo "unknown arm $1 (measured-preset, measured-preset-sigma-budget, preset, log-std-own, log-std-init-m2, critic-own, critic-own-m2, cont, cont-m2, cont-sigma, cont-kl10, critic25, cont25, critic25-kl10, critic25-kl10-sigma, critic25-kl10-sigma-d01, kl10-net64, kl10-net64-m0, kl-norm-net64, kl-norm-net64-fresh, kl-measured-net64-fresh, kl-measured06-net64-fresh, kl-measured24-net64-fresh, npg-budget, npg-kl10)" >&2
           return 2 ;;
    esac
}

arm_algo() {  # the agent an arm runs: ACKTR, but for the npg- reference arms
    case "$1" in
        npg-*) echo npg ;;
        *) echo acktr ;;
    esac
}

status=0
for task in $TASKS; do
    for seed in ${SEEDS//,/ }; do
        for arm in $ARMS; do
            overrides=$(arm_args "$arm") || exit 2
            algo=$(arm_algo "$arm")
            # shellcheck disable=SC2086  # the overrides are words: an option and its value
            python -m rlgeom.train --algo "$algo" --env "$task" --seeds "$seed" --timesteps "$TIMESTEPS" \
                --eval-episodes 10 --workers 1 --no-progress --logdir "$LOGDIR/$arm" $overrides
            code=$?
            [ "$code" -eq 2 ] && exit 2
            [ "$code" -ne 0 ] && status=1
            rm -f "$LOGDIR/$arm/$task/$algo/seed$seed/model.safetensors"  # 1-5 MB each; done.json and events are the record
        done
    done
done
exit $status
