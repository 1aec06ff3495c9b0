# bash completion for vramguard(1); installed by `make install` into
# PREFIX/share/bash-completion/completions/vramguard.
_vramguard()
{
    local cur prev cmd i
    COMPREPLY=()
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    cmd=${COMP_WORDS[1]}
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "run check audit replay status metrics budget --help --version" -- "$cur"))
        return
    fi
    case $cmd in
    run)
        # After "--" (or the command's first word) complete the command itself.
        for ((i = 2; i < COMP_CWORD; i++)); do
            if [ "${COMP_WORDS[i]}" = "--" ]; then
                COMPREPLY=($(compgen -c -- "$cur"))
                return
            fi
        done
        case $prev in
        --audit|--libcuda) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --managed) COMPREPLY=($(compgen -W "count ignore deny" -- "$cur")); return ;;
        --on-bad-pointer) COMPREPLY=($(compgen -W "warn reject abort" -- "$cur")); return ;;
        --pool) COMPREPLY=($(compgen -W "off cache" -- "$cur")); return ;;
        --log) COMPREPLY=($(compgen -W "error warn info debug" -- "$cur")); return ;;
        --shared-group) COMPREPLY=($(compgen -W "off on" -- "$cur")); return ;;
        --shared) COMPREPLY=($(compgen -W "$(_vramguard_regions)" -- "$cur")); return ;;
        --budget|--device-budget|--wait-ms|--backtrace|--leaks-report|--verify) return ;;
        esac
        COMPREPLY=($(compgen -W "$(vramguard run --help 2>/dev/null | sed -n 's/^  \(--[a-z-]*\).*/\1/p') --per-process --" -- "$cur"))
        ;;
    check) COMPREPLY=($(compgen -W "--json --help" -- "$cur")) ;;
    audit)
        case $prev in
        --svg) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --top) return ;;
        esac
        COMPREPLY=($(compgen -W "--leaks --top --svg --csv --json --help" -f -- "$cur"))
        ;;
    replay)
        case $prev in --budget|--pid) return ;; esac
        COMPREPLY=($(compgen -W "--budget --pid --json --help" -f -- "$cur"))
        ;;
    status) COMPREPLY=($(compgen -W "--watch --json --help $(_vramguard_regions)" -- "$cur")) ;;
    metrics)
        case $prev in
        --textfile) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --listen) COMPREPLY=($(compgen -W "127.0.0.1:9400 localhost:9400" -- "$cur")); return ;;
        esac
        COMPREPLY=($(compgen -W "--listen --textfile --help $(_vramguard_regions)" -- "$cur"))
        ;;
    budget) COMPREPLY=($(compgen -W "--list --remove --json --help none $(_vramguard_regions)" -- "$cur")) ;;
    esac
}

# The shared budgets in /dev/shm, by name.
_vramguard_regions()
{
    local f
    for f in /dev/shm/vramguard.*; do
        [ -e "$f" ] || continue
        case $f in *.tmp.*) continue ;; esac
        printf '%s\n' "${f#/dev/shm/vramguard.}"
    done
}

complete -F _vramguard vramguard
