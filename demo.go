package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/httpapi"
)

// demoCommand is the seed's demo end to end on its own pool, state dir and
// API port: fill, check, claim through the API, GET the sandbox, claim
// through the seed-compatible endpoint, GET that one, check the backfill,
// then stop and terminate everything it started.
func demoCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "The seed's demo end to end: fill, check, claim through the API, call the sandbox, check again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("state-dir") && os.Getenv("SANDBOXPOOL_STATE_DIR") == "" {
				dir, err := os.MkdirTemp("", "sandboxpool-demo-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				o.stateDir = dir
			}
			if !cmd.Flags().Changed("pool") && os.Getenv("SANDBOXPOOL_POOL") == "" {
				o.pool = "demo"
			}
			if !cmd.Flags().Changed("listen") && os.Getenv("SANDBOXPOOL_LISTEN") == "" {
				o.listen = "127.0.0.1:0" // a free loopback port
			}
			if o.listen == "" {
				return usagef("--listen: demo needs the API; give a loopback address such as 127.0.0.1:0")
			}
			cfg, err := o.config(sizeSet(cmd))
			if err != nil {
				return err
			}
			return demo(cmd.Context(), cmd.OutOrStdout(), o, cfg)
		},
	}
}

func demo(ctx context.Context, out io.Writer, o *options, cfg pool.Config) error {
	logger := slog.New(slog.DiscardHandler)
	fmt.Fprintf(out, "Starting a controller for pool %q (%s backend) with its API...\n", cfg.Pool, o.backend)
	s, err := startController(ctx, o, cfg, logger, false)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "\nStopping and terminating every sandbox the demo started...")
		s.stop(true, logger)
		fmt.Fprintln(out, "Done.")
	}()
	base := "http://" + s.apiAddr
	client := &httpapi.Client{BaseURL: base, Token: o.token}
	fmt.Fprintf(out, "API at %s\n\nRunning initial pool maintenance...\n", base)
	if err := s.ctrl.WaitAtTarget(ctx, nil); err != nil {
		return fmt.Errorf("fill the pool: %w", err)
	}
	fmt.Fprintln(out, "Done.")
	check := func() error {
		view, err := client.Pool(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintln(out)
		printPool(out, view, "")
		return nil
	}
	if err := check(); err != nil {
		return err
	}

	fmt.Fprintf(out, "\nClaiming a sandbox with POST %s/v1/claims...\n", base)
	claim, err := client.Claim(ctx, true, 30*time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Claimed sandbox %s at %s (%ds left)\n", claim.ID, claim.URL, claim.SecondsLeft)
	if err := callSandbox(ctx, out, claim.URL); err != nil {
		return err
	}
	if err := waitBackfill(ctx, s.ctrl); err != nil {
		return err
	}
	if err := check(); err != nil {
		return err
	}

	fmt.Fprintf(out, "\nClaiming a sandbox with the seed-compatible GET %s/claim...\n", base)
	url, err := seedClaim(ctx, base, o.token)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Claimed sandbox URL: %s\n", url)
	if err := callSandbox(ctx, out, url); err != nil {
		return err
	}
	if err := waitBackfill(ctx, s.ctrl); err != nil {
		return err
	}
	return check()
}

// waitBackfill waits for the pool to be back at target (the seed sleeps 2 s).
func waitBackfill(ctx context.Context, ctrl *pool.Controller) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := ctrl.WaitAtTarget(ctx, nil); err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	return nil
}

func seedClaim(ctx context.Context, base, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/claim", nil)
	if err != nil {
		return "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET /claim: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /claim: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	// The seed's web function answers the URL as a JSON string.
	return strings.Trim(strings.TrimSpace(string(body)), `"`), nil
}

func callSandbox(ctx context.Context, out io.Writer, url string) error {
	fmt.Fprintln(out, "\nCalling the server in the sandbox...")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("call the sandbox: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Sandbox server response (%s):\n%s\n", resp.Status, strings.TrimSpace(string(body)))
	return nil
}
