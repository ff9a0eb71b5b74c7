#!/usr/bin/env escript
%% -*- erlang -*-
%%! +P 2000000
%% The Erlang side of bench/process/run.sh: the same three measurements with the same
%% protocol as bench/process/registry/main.lua, printed in the same line format.
%%   escript erlang_bench.erl SPAWN_N PINGPONG_N BCAST_N BCAST_ROUNDS [spawn|pingpong|broadcast]
-mode(compile).

main(Args) ->
    {[SpawnN, PingN, BcastN, Rounds], Only} =
        case Args of
            [] -> {[100000, 200000, 10000, 10], "all"};
            [_, _, _, _] -> {[list_to_integer(A) || A <- Args], "all"};
            [A1, A2, A3, A4, O] -> {[list_to_integer(A) || A <- [A1, A2, A3, A4]], O}
        end,
    Run = fun(Name) -> Only =:= "all" orelse Only =:= Name end,
    Run("spawn") andalso bench_spawn(SpawnN),
    Run("pingpong") andalso bench_pingpong(PingN),
    Run("broadcast") andalso bench_broadcast(BcastN, Rounds),
    io:format("bench done~n").

now_s() -> erlang:monotonic_time(nanosecond) / 1.0e9.

report(Name, Ops, Secs) ->
    io:format("bench result name=~s ops=~b per_sec=~b seconds=~.6f~n",
              [Name, Ops, round(Ops / Secs), Secs]).

rss_kb() ->
    {ok, B} = file:read_file("/proc/self/status"),
    [Line | _] = [L || L <- binary:split(B, <<"\n">>, [global]),
                       binary:match(L, <<"VmRSS:">>) =/= nomatch],
    [_, V | _] = binary:split(Line, [<<" ">>, <<"\t">>], [global, trim_all]),
    binary_to_integer(V).

%% An idle process: acks "ready" right before blocking in receive, like idle.lua.
idle(Parent) ->
    Parent ! ready,
    receive _ -> ok end.

collect(0) -> ok;
collect(N) -> receive ready -> collect(N - 1) end.

%% Spawns in batches of 1000 and waits for every ack (as main.lua's spawn_idle does).
spawn_idle(N, Acc) when N =< 0 -> Acc;
spawn_idle(N, Acc) ->
    B = min(1000, N),
    Self = self(),
    Acc1 = lists:foldl(fun(_, A) -> [spawn(fun() -> idle(Self) end) | A] end, Acc, lists:seq(1, B)),
    collect(B),
    spawn_idle(N - B, Acc1).

bench_spawn(N) ->
    [P ! stop || P <- spawn_idle(100, [])],
    timer:sleep(200),
    Before = rss_kb(),
    T0 = now_s(),
    Pids = spawn_idle(N, []),
    Secs = now_s() - T0,
    After = rss_kb(),
    report("spawn", N, Secs),
    io:format("bench rss before_kb=~b after_kb=~b n=~b~n", [Before, After, N]),
    [P ! stop || P <- Pids],
    timer:sleep(200).

pong(Pinger) ->
    receive
        {ping, I} -> Pinger ! {pong, I}, pong(Pinger);
        stop -> ok
    end.

ping(_Pong, I, N) when I > N -> ok;
ping(Pong, I, N) ->
    Pong ! {ping, I},
    receive {pong, I} -> ping(Pong, I + 1, N) end.

bench_pingpong(N) ->
    Self = self(),
    Pong = spawn(fun() -> pong(Self) end),
    ping(Pong, 1, 1000),
    T0 = now_s(),
    ping(Pong, 1, N),
    Secs = now_s() - T0,
    Pong ! stop,
    report("pingpong", N, Secs).

receiver(Parent, Rounds) ->
    Parent ! ready,
    recv_loop(Rounds, 0, Parent).

recv_loop(0, Bytes, Parent) -> Parent ! {done, Bytes};
recv_loop(R, Bytes, Parent) ->
    receive {b, S} -> recv_loop(R - 1, Bytes + byte_size(S), Parent) end.

sum_done(0, Acc) -> Acc;
sum_done(N, Acc) -> receive {done, B} -> sum_done(N - 1, Acc + B) end.

bench_broadcast(N, Rounds) ->
    Self = self(),
    Pids = [spawn(fun() -> receiver(Self, Rounds) end) || _ <- lists:seq(1, N)],
    collect(N),
    Bin = binary:copy(<<"0123456789">>, 30),
    T0 = now_s(),
    lists:foreach(fun(_) -> [P ! {b, Bin} || P <- Pids] end, lists:seq(1, Rounds)),
    Bytes = sum_done(N, 0),
    Secs = now_s() - T0,
    Bytes = N * Rounds * byte_size(Bin),
    report("broadcast", N * Rounds, Secs).
